"""The plain-Python oracle (`tests/reference.py`) on tiny hand-built landing zones.

Every expectation here is computed by hand from METRICS.md; no Spark.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import defaultdict
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tests import reference as ref

H0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)  # 2026-03-02T00:00:00Z
MIN = 60_000
HOUR = 3_600_000
A = [("exp", "A", True)]
B = [("exp", "B", True)]
_ids = count()


def at(hour: int, minute: float = 0, ms: int = 0) -> int:
    """Epoch ms at `minute` (and `ms`) past hour H0 + `hour`."""
    return H0 + hour * HOUR + int(minute * MIN) + ms


def iso(hour: int) -> str:
    """The stored text of hour H0 + `hour`."""
    return datetime.fromtimestamp((H0 + hour * HOUR) / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def beacon(ts: int, kind: str = "page_view", *, visitor="v1", session="s1", exps=None, **extra):
    """A beacon dict; `exps` is a list of (id, variant, qualified)."""
    exps = A if exps is None else exps
    data = {
        "event_id": extra.pop("event_id", f"e{next(_ids):06d}"),
        "visitor_id": visitor,
        "session_id": session,
        "ts": ts,
        "type": kind,
        "experiments": [{"id": e, "variant": v, "qualified": q} for e, v, q in exps],
        **extra,
    }
    if kind == "order" and "order" not in data:
        data["order"] = {"order_id": "o1", "revenue": 10.0, "units": 1}
    return data


def land(root: Path, items: list, name: str = "part-0.json", hour: int | None = None) -> Path:
    """Append beacons (dicts, foldered by their ts) or raw lines (to `hour`) to landing files."""
    by_folder: dict[int, list[str]] = defaultdict(list)
    for item in items:
        if isinstance(item, dict):
            by_folder[(item["ts"] - H0) // HOUR].append(json.dumps(item))
        else:
            by_folder[hour].append(item)
    for h, lines in by_folder.items():
        key = datetime.fromtimestamp((H0 + h * HOUR) / 1000, tz=UTC).strftime("%Y-%m-%d-%H")
        folder = root / f"hour={key}"
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in lines)
        if name.endswith(".gz"):
            (folder / name).write_bytes(gzip.compress(text.encode()))
        else:
            with (folder / name).open("a") as f:
                f.write(text)
    return root


def metrics_of(hourly: dict, key=("exp", "A", "assigned")) -> dict[str, dict[str, float]]:
    """{hour ISO: {metric: value}} of one key of hourly_metrics."""
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for (metric, e, v, p, hour), value in hourly.items():
        if (e, v, p) == key:
            found[hour][metric] = value
    return dict(found)


def from_landing(tmp_path: Path, beacons: list[dict]) -> list[dict]:
    """Write the beacons to a landing zone and read back the counted ones."""
    return ref.load_counted(land(tmp_path / "landing", beacons))


# --- hours -----------------------------------------------------------------------------------


def test_hour_texts_match_the_project_formats():
    from expo_platform.core.hours import hour_iso, hour_key

    moment = datetime(2026, 3, 2, 5, tzinfo=UTC)
    index = int(moment.timestamp()) // 3600
    assert ref.hour_of_key(hour_key(moment)) == index == ref.hour_of_iso(hour_iso(moment))
    assert ref.iso_of_hour(index) == hour_iso(moment) == "2026-03-02T05:00:00Z"
    with pytest.raises(ValueError):
        ref.hour_of_key("2026-03-02T05")


# --- section 1 -------------------------------------------------------------------------------


def test_wrong_partition_blank_and_malformed_lines(tmp_path):
    good = beacon(at(0, 10))
    late = beacon(at(1, 5))  # ts of hour 1, landed in hour 0's folder
    root = land(tmp_path, [json.dumps(good), "", "   ", json.dumps(late), "[1, 2]"], hour=0)
    assert [b["event_id"] for b in ref.load_counted(root)] == [good["event_id"]]
    counts = ref.quality(root)[iso(0)]
    assert counts["beacons_total"] == 3  # blank lines are no beacons
    assert counts["beacons_valid"] == 1
    assert counts["beacons_rejected_wrong_partition"] == 1
    assert counts["beacons_rejected_malformed_json"] == 1
    assert counts["beacons_duplicate"] == 0


def test_duplicate_in_a_later_file(tmp_path):
    first = beacon(at(0, 10), event_id="e1")
    resent = {**first, "type": "error"}  # same ts, later file: the first read counts
    early = beacon(at(0, 20), event_id="e2", visitor="v2", session="s2")
    earlier = {**early, "ts": at(0, 15), "type": "error"}  # smaller ts in a later file wins
    root = land(tmp_path, [first, early], "a.json")
    land(root, [resent, earlier], "b.json.gz")
    counted = {b["event_id"]: b for b in ref.load_counted(root)}
    assert counted["e1"]["type"] == "page_view" and counted["e1"] == first
    assert counted["e2"] == earlier
    counts = ref.quality(root)[iso(0)]
    assert (counts["beacons_total"], counts["beacons_valid"], counts["beacons_duplicate"]) == (
        4,
        2,
        2,
    )
    hourly = metrics_of(ref.hourly_metrics(counted.values()))[iso(0)]
    assert (hourly["page_views"], hourly["errors"]) == (1, 1)


# --- section 2 -------------------------------------------------------------------------------


def test_35_minute_boundary(tmp_path):
    t0 = at(0)
    beacons = [beacon(t0), beacon(t0 + 2_100_000), beacon(t0 + 2 * 2_100_000 + 1)]
    found = ref.visits(from_landing(tmp_path, beacons))
    assert [len(v.beacons) for v in found] == [2, 1]
    assert [v.visit_id for v in found] == [f"s1#{t0}", f"s1#{t0 + 4_200_001}"]
    hourly = metrics_of(ref.hourly_metrics(from_landing(tmp_path, beacons)))
    assert hourly[iso(0)]["visits"] == 1 and hourly[iso(0)]["bounces"] == 0
    # The third beacon (01:10:00.001) is a visit of its own, one page view: a bounce.
    assert hourly[iso(1)]["visits"] == 1 and hourly[iso(1)]["bounces"] == 1


def test_a_visit_over_three_hours_counts_once(tmp_path):
    beacons = [beacon(at(0, 50)), beacon(at(1, 20)), beacon(at(1, 50)), beacon(at(2, 10))]
    counted = from_landing(tmp_path, beacons)
    assert len(ref.visits(counted)) == 1
    hourly = metrics_of(ref.hourly_metrics(counted))
    assert [hourly[iso(h)]["page_views"] for h in range(3)] == [1, 2, 1]
    assert [hourly[iso(h)]["visits"] for h in range(3)] == [1, 0, 0]
    whole = ref.visitor_sums(counted, "exp", "assigned")
    assert whole[("A", "v1")]["visits"] == 1 and whole[("A", "v1")]["page_views"] == 4
    # Over hours 1-2 the visit started before the range: page views, no visit.
    later = ref.visitor_sums(counted, "exp", "assigned", iso(1), iso(2))
    assert later[("A", "v1")]["visits"] == 0 and later[("A", "v1")]["page_views"] == 3


def test_12_hour_cut(tmp_path):
    # s1: a beacon every 30 minutes for 13 hours; the one at exactly 12 h starts a new visit.
    s1 = [beacon(at(0) + k * 30 * MIN) for k in range(27)]
    # s2: 11:59:59.999 still belongs to the first visit; 12:00:00.000 starts a new one.
    s2 = [beacon(at(0) + k * 30 * MIN, session="s2", visitor="v2") for k in range(24)]
    s2 += [beacon(at(12) - 1, session="s2", visitor="v2"), beacon(at(12), session="s2")]
    found = {v.visit_id: v for v in ref.visits(from_landing(tmp_path, s1 + s2))}
    assert {k: len(v.beacons) for k, v in found.items()} == {
        f"s1#{at(0)}": 24,
        f"s1#{at(12)}": 3,
        f"s2#{at(0)}": 25,
        f"s2#{at(12)}": 1,
    }
    # A visit's visitor is the visitor_id of its first beacon.
    assert found[f"s2#{at(12)}"].visitor_id == "v1" and found[f"s2#{at(0)}"].visitor_id == "v2"
    hourly = metrics_of(ref.hourly_metrics(from_landing(tmp_path, s1 + s2)))
    assert hourly[iso(12)]["visits"] == 2 and hourly[iso(12)]["bounces"] == 1
    assert sum(m["visits"] for m in hourly.values()) == 4


def test_an_order_id_counts_once_per_visit(tmp_path):
    o1 = {"order_id": "o1", "revenue": 10.0, "units": 2}
    beacons = [
        beacon(at(0, 10), "order", order=o1),
        beacon(at(0, 12), "order", order={**o1, "revenue": 99.0}),  # reloaded: adds nothing
        beacon(at(0, 15), "order", order={"order_id": "o2", "revenue": 5, "units": 1}),
        beacon(at(1, 0), "order", order=o1),  # 45 minutes later: a new visit, counted again
    ]
    counted = ref.load_counted(land(tmp_path, beacons, "orders.json.gz"))
    hourly = metrics_of(ref.hourly_metrics(counted))
    assert [hourly[iso(0)][m] for m in ("orders", "units", "revenue")] == [2, 3, 15.0]
    assert [hourly[iso(1)][m] for m in ("orders", "units", "revenue")] == [1, 2, 10.0]
    sums = ref.visitor_sums(counted, "exp", "qualified")[("A", "v1")]
    assert (sums["orders"], sums["units"], sums["revenue"], sums["visits"]) == (3, 5, 25.0, 2)


# --- section 3 -------------------------------------------------------------------------------


def test_an_experiment_listed_twice_counts_its_first_entry(tmp_path):
    twice = [("exp", "A", False), ("other", "X", True), ("exp", "B", True)]
    assert ref.populations(beacon(0, exps=twice)) == [
        ("exp", "A", "assigned"),
        ("other", "X", "assigned"),
        ("other", "X", "qualified"),
    ]
    no_experiments = {k: v for k, v in beacon(at(0, 5)).items() if k != "experiments"}
    hourly = ref.hourly_metrics(
        from_landing(tmp_path, [beacon(at(0, 1), exps=twice), no_experiments])
    )
    assert {(e, v, p) for _, e, v, p, _ in hourly} == {
        ("exp", "A", "assigned"),
        ("other", "X", "assigned"),
        ("other", "X", "qualified"),
    }


def test_qualified_flipping_within_a_visit(tmp_path):
    unq, qual = [("exp", "A", False)], [("exp", "A", True)]
    beacons = [
        beacon(at(0, 50), exps=unq),
        # The same session signs in as v2 and qualifies: the qualified visit starts here.
        beacon(at(1, 10), exps=qual, visitor="v2"),
        beacon(at(1, 20), "order", exps=unq),
    ]
    counted = from_landing(tmp_path, beacons)
    assigned = metrics_of(ref.hourly_metrics(counted))
    qualified = metrics_of(ref.hourly_metrics(counted), ("exp", "A", "qualified"))
    assert [assigned[iso(h)]["visits"] for h in (0, 1)] == [1, 0]
    assert assigned[iso(1)]["orders"] == 1 and assigned[iso(1)]["visitors"] == 2
    assert list(qualified) == [iso(1)]  # no qualified beacon in hour 0: no row at all
    q = qualified[iso(1)]
    assert (q["page_views"], q["visits"], q["orders"], q["visitors"]) == (1, 1, 0, 1)
    assert ref.visitor_sums(counted, "exp", "qualified") == {
        ("A", "v2"): {**dict.fromkeys(ref.VISITOR_METRICS, 0.0), "page_views": 1, "visits": 1}
    }
    by_visitor = ref.visitor_sums(counted, "exp", "assigned")
    assert by_visitor[("A", "v1")]["visits"] == 1 and by_visitor[("A", "v2")]["visits"] == 0


# --- section 4 -------------------------------------------------------------------------------


def test_every_metric_of_a_present_key_and_visitors_24h(tmp_path):
    beacons = [
        beacon(at(0, 5), visitor="v1", session="s1", perf={"page_load_ms": 100}),
        beacon(at(0, 6), visitor="v1", session="s1", perf={"page_load_ms": 300}),
        beacon(at(0, 7), visitor="v1", session="s1", perf={"page_load_ms": None}),
        beacon(at(0, 8), "add_to_cart", visitor="v1", session="s1", perf={"page_load_ms": 9}),
        beacon(at(10, 0), "error", visitor="v2", session="s2"),
        beacon(at(23, 0), "add_to_cart", visitor="v3", session="s3"),
        beacon(at(24, 0), visitor="v4", session="s4"),
        beacon(at(24, 1), visitor="v5", session="s5"),
    ]
    hourly = metrics_of(ref.hourly_metrics(from_landing(tmp_path, beacons)))
    assert sorted(hourly) == [iso(0), iso(10), iso(23), iso(24)]  # no rows of empty hours
    assert all(set(m) == set(ref.HOURLY_METRICS) for m in hourly.values())
    h0 = hourly[iso(0)]
    assert (h0["page_views"], h0["page_load_ms_sum"], h0["page_load_ms_count"]) == (3, 400, 2)
    assert (h0["visits"], h0["bounces"], h0["errors"], h0["visitors"]) == (1, 0, 0, 1)
    assert hourly[iso(10)]["errors"] == 1 and hourly[iso(10)]["bounces"] == 0  # not a page view
    assert hourly[iso(23)]["page_views"] == 0 and hourly[iso(23)]["visits"] == 1
    assert [hourly[iso(h)]["visitors_24h"] for h in (0, 10, 23, 24)] == [1, 2, 3, 4]
    assert hourly[iso(24)]["bounces"] == 2  # two visits of one page view each


# --- section 7: sums and the scorecard ------------------------------------------------------


def random_traffic(seed: int, hours: int = 6, visitors: int = 80) -> list[dict]:
    """Deterministic messy traffic: variant switches, qualification flips, reloaded orders."""
    rng = random.Random(seed)
    beacons = []
    for n in range(visitors):
        visitor = f"v{n}"
        variant = rng.choice(["control", "B", "C"])
        for s in range(rng.randint(1, 3)):
            ts = at(0) + rng.randrange(hours * HOUR)
            for _ in range(rng.randint(1, 6)):
                if ts >= at(hours):
                    break
                if rng.random() < 0.05:  # a visitor seen in two variants
                    variant = rng.choice(["control", "B", "C"])
                exps = [("exp", variant, rng.random() < 0.6), ("aa", "x" if n % 2 else "y", True)]
                kind = rng.choice(["page_view"] * 4 + ["add_to_cart", "order", "error"])
                order = {
                    "order_id": f"o{n}-{rng.randint(0, 2)}",
                    "revenue": round(rng.uniform(0, 80), 2),
                    "units": rng.randint(0, 3),
                }
                extra = {"order": order} if kind == "order" else {}
                if kind == "page_view" and rng.random() < 0.7:
                    extra["perf"] = {"page_load_ms": rng.randint(50, 3000)}
                who = visitor if rng.random() > 0.05 else f"v{rng.randrange(visitors)}"
                beacons.append(
                    beacon(ts, kind, visitor=who, session=f"{visitor}-{s}", exps=exps, **extra)
                )
                ts += rng.choice([MIN, 10 * MIN, 30 * MIN, 35 * MIN, 36 * MIN, 50 * MIN])
    return beacons


def assert_sums_add_up(beacons: list[dict], hours: int) -> None:
    """Per key and metric, the per-visitor sums equal the hourly metrics over the range."""
    hourly = ref.hourly_metrics(beacons)
    keys = {(e, v, p) for _, e, v, p, _ in hourly}
    ranges = [(None, None), (iso(1), iso(3)), (iso(2), iso(2)), (iso(hours - 1), None)]
    for experiment, population in {(e, p) for e, _, p in keys}:
        for low, high in ranges:
            sums = ref.visitor_sums(beacons, experiment, population, low, high)
            for metric in ref.VISITOR_METRICS:
                by_variant: dict[str, float] = defaultdict(float)
                for (variant, _), values in sums.items():
                    by_variant[variant] += values[metric]
                expected: dict[str, float] = defaultdict(float)
                for (m, e, v, p, hour), value in hourly.items():
                    inside = (low is None or hour >= low) and (high is None or hour <= high)
                    if (m, e, p) == (metric, experiment, population) and inside:
                        expected[v] += value
                assert by_variant.keys() == expected.keys()
                for variant, total in expected.items():
                    assert math.isclose(by_variant[variant], total, rel_tol=1e-12), (
                        experiment,
                        population,
                        low,
                        high,
                        metric,
                        variant,
                    )


def test_visitor_sums_add_up_to_the_hourly_metrics(tmp_path):
    beacons = random_traffic(seed=5)
    counted = from_landing(tmp_path, beacons)
    assert len(counted) == len(beacons)
    assert_sums_add_up(counted, hours=6)


def test_sums_add_up_on_the_generators_traffic(tmp_path):
    """The project's generator only makes the input here; the counts come from the oracle."""
    from expo_platform.devtools.generator import GeneratorConfig, write_landing

    start = datetime(2026, 3, 2, tzinfo=UTC)
    config = GeneratorConfig(start=start, hours=3, visitors=300, seed=11, dirty_fraction=0.03)
    report = write_landing(config, tmp_path / "landing")
    quality = ref.quality(tmp_path / "landing")
    for key, kinds in report.kinds_by_hour.items():
        counts = quality[ref.iso_of_hour(ref.hour_of_key(key))]
        assert counts["beacons_valid"] == kinds["clean"]
        assert counts["beacons_duplicate"] == kinds["duplicate"]
        assert counts["beacons_total"] == report.lines_by_hour[key]
    assert_sums_add_up(ref.load_counted(tmp_path / "landing"), hours=3)


def test_a_multi_variant_visitor_is_left_out_of_the_scorecard(tmp_path):
    beacons = [
        beacon(at(0, 1), visitor="v1", session="s1", exps=A),
        beacon(at(1, 1), visitor="v1", session="s1b", exps=B),
        beacon(at(0, 2), visitor="v2", session="s2", exps=A),
        beacon(at(0, 3), visitor="v3", session="s3", exps=B),
        beacon(at(1, 4), "order", visitor="v4", session="s4", exps=B),
    ]
    counted = from_landing(tmp_path, beacons)
    sums = ref.visitor_sums(counted, "exp", "assigned")
    assert set(sums) == {("A", "v1"), ("B", "v1"), ("A", "v2"), ("B", "v3"), ("B", "v4")}
    card = ref.scorecard(counted, "exp", "assigned")
    assert card["control"] == "A"  # no `control` variant: the alphabetically first
    assert card["visitors_multi_variant"] == 1
    assert card["variants"] == {"A": {"visitors": 1}, "B": {"visitors": 2}}
    assert card["srm"]["counts"] == {"A": 1, "B": 2}
    assert [c["metric"] for c in card["comparisons"]] == [
        *ref.MEAN_METRICS,
        *ref.RATIO_METRICS,
    ]
    orders = card["comparisons"][0]
    assert (orders["control_value"], orders["variant_value"], orders["lift"]) == (0, 0.5, None)
    assert orders["p_value"] is None  # one control visitor: no test
    # Over hour 0 alone v1 saw only A.
    early = ref.scorecard(counted, "exp", "assigned", iso(0), iso(0))
    assert early["visitors_multi_variant"] == 0
    assert early["variants"] == {"A": {"visitors": 2}, "B": {"visitors": 1}}
    named = [beacon(at(0), exps=[("exp", "control", True)]), beacon(at(0), visitor="v2")]
    assert ref.scorecard(named, "exp", "assigned")["control"] == "control"


# --- statistics ------------------------------------------------------------------------------


def test_welch_against_a_hand_computation():
    c = np.array([1.0, 2.0, 3.0, 4.0])
    v = np.array([2.0, 4.0, 6.0, 9.0, 10.0])
    result = ref.welch("orders", ("control", "B"), list(c), list(v))
    se2_c, se2_v = c.var(ddof=1) / len(c), v.var(ddof=1) / len(v)
    se = math.sqrt(se2_c + se2_v)
    df = (se2_c + se2_v) ** 2 / (se2_c**2 / (len(c) - 1) + se2_v**2 / (len(v) - 1))
    diff = v.mean() - c.mean()
    assert diff == 3.7
    assert result["difference"] == pytest.approx(diff, abs=1e-12)
    assert result["lift"] == pytest.approx(diff / 2.5, abs=1e-12)
    half = sps.t.ppf(0.975, df) * se
    assert result["ci_low"] == pytest.approx(diff - half, abs=1e-12)
    assert result["ci_high"] == pytest.approx(diff + half, abs=1e-12)
    assert result["p_value"] == pytest.approx(2 * sps.t.sf(diff / se, df), abs=1e-12)
    assert (result["n_control"], result["n_variant"]) == (4, 5)
    # Undefined: too few visitors, or no spread at all.
    assert ref.welch("orders", ("control", "B"), [1.0], list(v))["p_value"] is None
    flat = ref.welch("orders", ("control", "B"), [0.0, 0.0], [1.0, 1.0])
    assert (flat["difference"], flat["ci_low"], flat["p_value"], flat["lift"]) == (
        1.0,
        None,
        None,
        None,
    )


def test_delta_method_on_a_small_example():
    # control: (bounces, visits) per visitor; R = 3/6, var_x = var_y = cov = 1, mean_x = 2.
    control = [{"bounces": y, "visits": x} for y, x in [(1, 2), (0, 1), (2, 3)]]
    ratio, variance = ref.ratio_and_variance([1, 0, 2], [2, 1, 3])
    assert ratio == 0.5 and variance == pytest.approx((1 - 2 * 0.5 + 0.25) / (3 * 4), abs=1e-15)
    # variant: R = 4/6, var_x = 1/3, var_y = 2/3, cov = 1/3, mean_x = 1.5: Var = 10/243.
    variant = [{"bounces": y, "visits": x} for y, x in [(1, 1), (0, 1), (1, 2), (2, 2)]]
    assert ref.ratio_and_variance([1, 0, 1, 2], [1, 1, 2, 2])[1] == pytest.approx(10 / 243)
    # The same as the variance of the residuals y - R x, over n mean_x^2.
    y, x = np.array([1, 0, 1, 2.0]), np.array([1, 1, 2, 2.0])
    assert np.var(y - 2 / 3 * x, ddof=1) / (4 * 1.5**2) == pytest.approx(10 / 243)
    result = ref.delta("bounce_rate", ("control", "B"), control, variant)
    se = math.sqrt(1 / 48 + 10 / 243)
    assert result["difference"] == pytest.approx(1 / 6, abs=1e-15)
    assert result["ci_low"] == pytest.approx(1 / 6 - 1.959963984540054 * se, abs=1e-12)
    assert result["ci_high"] == pytest.approx(1 / 6 + 1.959963984540054 * se, abs=1e-12)
    assert result["p_value"] == pytest.approx(2 * sps.norm.sf((1 / 6) / se), abs=1e-12)
    assert result["lift"] == pytest.approx(1 / 3)
    # A zero denominator leaves the ratio undefined.
    zero = [{"bounces": 0, "visits": 0}] * 2
    assert ref.delta("bounce_rate", ("control", "B"), zero, variant)["difference"] is None


def test_srm():
    even = ref.srm({"A": 100, "B": 130})
    assert even["chi2"] == pytest.approx(450 / 115)
    assert even["p_value"] == pytest.approx(sps.chi2.sf(450 / 115, 1))
    assert not even["flagged"]
    assert ref.srm({"A": 1000, "B": 1200})["flagged"]  # chi2 = 18.2, p = 2e-5
    weighted = ref.srm({"A": 50, "B": 150}, {"A": 1, "B": 3})
    assert weighted["expected"] == {"A": 50, "B": 150} and weighted["p_value"] == 1
    # A weighted arm that received nobody counts as zero visitors.
    assert ref.srm({"A": 40}, {"A": 1, "B": 1})["counts"] == {"A": 40, "B": 0}
    assert ref.srm({"A": 40})["p_value"] is None
    with pytest.raises(ValueError):
        ref.srm({"A": 1, "C": 2}, {"A": 1, "B": 1})


def test_compare_scorecards_lists_differences():
    card = ref.scorecard(random_traffic(seed=2), "exp", "assigned")
    twin = json.loads(json.dumps(card))
    assert ref.compare_scorecards(card, twin) == []
    twin["comparisons"][0]["p_value"] += 1e-6
    twin["srm"]["flagged"] = not twin["srm"]["flagged"]
    twin["comparisons"][1]["ci_low"] = None
    card["comparisons"][2]["lift"] = None
    twin["comparisons"][2]["lift"] = float("nan")  # None and NaN both mean undefined
    twin["comparisons"].pop()
    found = ref.compare_scorecards(card, twin)
    assert len(found) == 4, found
    assert found[0].startswith("srm.flagged")


def test_scorecard_agrees_with_the_project_statistics():
    """The project's statistics, fed our per-visitor sums, give our scorecard."""
    from expo_platform.analysis import stats

    counted = random_traffic(seed=9, visitors=300)
    for population, weights in [("assigned", None), ("qualified", {"control": 2, "B": 1, "C": 1})]:
        sums = ref.visitor_sums(counted, "exp", population, iso(1), iso(4))
        rows = pd.DataFrame(
            [{"variant": v, "visitor_id": who, **values} for (v, who), values in sums.items()]
        )
        ours = ref.scorecard(counted, "exp", population, iso(1), iso(4), weights)
        assert ours["visitors_multi_variant"] > 0
        assert ref.compare_scorecards(ours, stats.scorecard(rows, weights=weights)) == []
