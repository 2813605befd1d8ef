"""An independent, plain-Python reading of METRICS.md sections 1-4 and 7: the tests' oracle.

From the landing-zone files straight to hourly metrics, per-visitor sums and the scorecard,
with no Spark and nothing of `expo_platform` in the computation. Only the validation of one
line is shared with another test module (`reference_reason`, itself an independent reading
of section 1).

Where METRICS.md is silent this module takes the choices below, those of a careful analyst
(and, for the statistics, the conventions `expo_platform.analysis.stats` documents, so that the two
scorecards can be compared field by field):

- Reading: folders `hour=YYYY-MM-DD-HH`, in hour order; in each, `*.json` and `*.json.gz`
  sorted by name. Lines end at `\\n`, `\\r\\n` or `\\r`; a line of whitespace only is blank.
- Duplicates: over the whole landing zone, the first valid beacon by `ts` of an `event_id`
  counts; a tie in `ts` goes to the first one read.
- Statistics: sample variances and covariances with ddof = 1; the mean-metric interval is
  the 95% Welch interval of the difference (variant - control); lift = difference / control
  value. A figure that is undefined (no visitors, fewer than two visitors in an arm for a
  test, zero standard error, a zero denominator, a zero control value for lift) is None.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from tests.test_generated_traffic import parse_line, reference_reason

HOUR_MS = 3_600_000
VISIT_GAP_MS = 2_100_000  # a larger gap between consecutive beacons starts a new visit
VISIT_MAX_MS = 43_200_000  # a beacon this long after the visit's first starts a new one
DAY_HOURS = 24  # visitors_24h looks at [H - 23h, H + 1h)

# Summed per (key, hour, visitor); `visitors` and `visitors_24h` are distinct counts.
SUMMED = (
    "page_views",
    "visits",
    "bounces",
    "orders",
    "units",
    "revenue",
    "errors",
    "page_load_ms_sum",
    "page_load_ms_count",
)
HOURLY_METRICS = ("visitors", *SUMMED, "visitors_24h")
VISITOR_METRICS = ("page_views", "visits", "bounces", "orders", "units", "revenue", "errors")
MEAN_METRICS = ("orders", "revenue", "page_views", "visits")
RATIO_METRICS = {  # name -> (numerator, denominator), both per-visitor sums
    "bounce_rate": ("bounces", "visits"),
    "error_rate": ("errors", "page_views"),
    "revenue_per_visit": ("revenue", "visits"),
}
ALPHA = 0.05
SRM_THRESHOLD = 0.001
REASONS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
SUFFIXES = (".json", ".json.gz")  # landing files; gzip is read transparently

_KEY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})-(\d{2})$")
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):00:00Z$")
_LINE_END = re.compile(rb"\r\n|\r|\n")
JSON_SPACE = " \t\r\n"  # JSON's whitespace: a line of it only is blank

Key = tuple[str, str, str]  # (experiment, variant, population)


# --- hours -----------------------------------------------------------------------------------


def _hour_index(match: re.Match | None, text: str) -> int:
    """Hours since the epoch of a matched (year, month, day, hour)."""
    if match is None:
        raise ValueError(f"not an hour: {text!r}")
    moment = datetime(*(int(g) for g in match.groups()), tzinfo=UTC)
    return int(moment.timestamp()) // 3600


def hour_of_key(key: str) -> int:
    """Hour index of a landing folder key such as `2026-03-02-05`."""
    return _hour_index(_KEY.match(key), key)


def hour_of_iso(text: str) -> int:
    """Hour index of a stored hour such as `2026-03-02T05:00:00Z`."""
    return _hour_index(_ISO.match(text), text)


def iso_of_hour(index: int) -> str:
    """The stored text of an hour index: `2026-03-02T05:00:00Z`."""
    return datetime.fromtimestamp(index * 3600, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_of_ts(ts: int) -> int:
    """Hour index of an epoch-millisecond timestamp."""
    return ts // HOUR_MS


# --- section 1: beacons ----------------------------------------------------------------------


def landing_lines(landing_dir: Path) -> Iterator[tuple[int, str | bytes]]:
    """(hour index of the folder, line) for every non-blank line, in reading order."""
    folders = [p for p in Path(landing_dir).glob("hour=*") if p.is_dir()]
    for folder in sorted(folders, key=lambda p: hour_of_key(p.name.removeprefix("hour="))):
        hour = hour_of_key(folder.name.removeprefix("hour="))
        files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)]
        for path in sorted(files, key=lambda p: p.name):
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            # Split on line ends only: str.splitlines would also split at U+2028 and friends,
            # which may stand unescaped inside a JSON string.
            for raw in _LINE_END.split(data):
                if raw.strip(JSON_SPACE.encode()):
                    yield hour, _text(raw)


def _text(raw: bytes) -> str | bytes:
    """A line as text, or its bytes when it is not UTF-8 (a malformed line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


@dataclass(frozen=True)
class Line:
    """One non-blank landing line and what it counts as."""

    hour: int
    text: str
    status: str  # "valid", "duplicate" or a rejection reason
    beacon: dict | None


def classify(landing_dir: Path) -> list[Line]:
    """Every non-blank line with its status: valid, duplicate or its rejection reason."""
    lines = []
    for hour, text in landing_lines(landing_dir):
        reason = reference_reason(text, hour)
        lines.append(Line(hour, text, reason or "valid", None if reason else parse_line(text)))
    # The first by ts counts; min() keeps the first read among equal ts.
    first: dict[str, int] = {}
    for position, line in enumerate(lines):
        if line.beacon is None:
            continue
        event_id = line.beacon["event_id"]
        best = first.get(event_id)
        if best is None or line.beacon["ts"] < lines[best].beacon["ts"]:
            first[event_id] = position
    counted = set(first.values())
    return [
        Line(x.hour, x.text, "duplicate", x.beacon)
        if x.beacon is not None and i not in counted
        else x
        for i, x in enumerate(lines)
    ]


def load_counted(landing_dir: Path) -> list[dict]:
    """Every counted beacon (valid, first of its event_id) as its parsed dict."""
    return [line.beacon for line in classify(landing_dir) if line.status == "valid"]


def quality(landing_dir: Path) -> dict[str, Counter]:
    """Per landing hour (ISO): beacons_total, _valid, _duplicate and _rejected_<reason>."""
    names = ["total", "valid", "duplicate", *(f"rejected_{r}" for r in REASONS)]
    result: dict[str, Counter] = {}
    for line in classify(landing_dir):
        zeros = {f"beacons_{name}": 0 for name in names}  # every count present, as stored
        counts = result.setdefault(iso_of_hour(line.hour), Counter(zeros))
        counts["beacons_total"] += 1
        if line.status in ("valid", "duplicate"):
            counts[f"beacons_{line.status}"] += 1
        else:
            counts[f"beacons_rejected_{line.status}"] += 1
    return result


# --- section 2: visits -----------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """A visit: its beacons ordered by (ts, event_id) and the event_ids of counted orders."""

    visit_id: str
    session_id: str
    visitor_id: str
    first_ts: int
    beacons: tuple[dict, ...]
    counted_orders: frozenset[str]


def _visit(session_id: str, beacons: list[dict]) -> Visit:
    """A Visit of a run of beacons; an order_id counts at its first order beacon."""
    seen: set[str] = set()
    counted = set()
    for beacon in beacons:
        if beacon["type"] == "order" and beacon["order"]["order_id"] not in seen:
            seen.add(beacon["order"]["order_id"])
            counted.add(beacon["event_id"])
    first = beacons[0]
    return Visit(
        visit_id=f"{session_id}#{first['ts']}",
        session_id=session_id,
        visitor_id=first["visitor_id"],
        first_ts=first["ts"],
        beacons=tuple(beacons),
        counted_orders=frozenset(counted),
    )


def visits(beacons: Iterable[dict]) -> list[Visit]:
    """The visits of counted beacons: 35-minute gaps and 12-hour cuts, per session."""
    by_session: dict[str, list[dict]] = defaultdict(list)
    for beacon in beacons:
        by_session[beacon["session_id"]].append(beacon)
    result = []
    for session_id in sorted(by_session):
        run: list[dict] = []
        for beacon in sorted(by_session[session_id], key=lambda b: (b["ts"], b["event_id"])):
            if run and (
                beacon["ts"] - run[-1]["ts"] > VISIT_GAP_MS
                or beacon["ts"] - run[0]["ts"] >= VISIT_MAX_MS
            ):
                result.append(_visit(session_id, run))
                run = []
            run.append(beacon)
        if run:
            result.append(_visit(session_id, run))
    return result


# --- section 3: populations ------------------------------------------------------------------


def populations(beacon: dict) -> list[Key]:
    """The population keys of a beacon; the first entry of an experiment id counts."""
    keys: list[Key] = []
    seen: set[str] = set()
    for entry in beacon.get("experiments") or []:
        if entry["id"] in seen:
            continue
        seen.add(entry["id"])
        keys.append((entry["id"], entry["variant"], "assigned"))
        if entry.get("qualified") is True:
            keys.append((entry["id"], entry["variant"], "qualified"))
    return keys


# --- section 4: hourly metrics ---------------------------------------------------------------

# (key, hour index, visitor_id) -> contributions of that visitor to the key's hour. Every
# beacon in P makes an entry, so a visitor with a beacon in P in H is present even at zero.
Facts = dict[tuple[Key, int, str], Counter]


def _page_load(beacon: dict) -> int | None:
    """The beacon's perf.page_load_ms, or None when it carries none."""
    perf = beacon.get("perf")
    return perf.get("page_load_ms") if isinstance(perf, dict) else None


def _beacon_facts(beacon: dict, visit: Visit) -> Counter:
    """What one beacon adds to each population it is in (visits and bounces aside)."""
    facts: Counter = Counter()
    kind = beacon["type"]
    facts["page_views"] = int(kind == "page_view")
    facts["errors"] = int(kind == "error")
    if beacon["event_id"] in visit.counted_orders:
        facts["orders"] = 1
        facts["units"] = beacon["order"]["units"]
        facts["revenue"] = float(beacon["order"]["revenue"])
    load = _page_load(beacon)
    if kind == "page_view" and load is not None:
        facts["page_load_ms_sum"] = load
        facts["page_load_ms_count"] = 1
    return facts


def facts(beacons: Iterable[dict]) -> Facts:
    """Contributions per (key, hour, visitor) of every counted beacon, by section 4."""
    result: Facts = defaultdict(Counter)
    for visit in visits(beacons):
        started: set[Key] = set()
        bounce = len(visit.beacons) == 1 and visit.beacons[0]["type"] == "page_view"
        for beacon in visit.beacons:
            added = _beacon_facts(beacon, visit)
            for key in populations(beacon):
                entry = result[(key, hour_of_ts(beacon["ts"]), beacon["visitor_id"])]
                entry.update(added)
                # A visit counts in P once, at its first beacon in P, for that beacon's visitor.
                if key not in started:
                    started.add(key)
                    entry["visits"] += 1
                    entry["bounces"] += int(bounce)
    return result


def hourly_metrics(beacons: Iterable[dict]) -> dict[tuple[str, str, str, str, str], float]:
    """Every metric of every key with beacons in an hour: (metric, e, v, population, hour)."""
    per_hour: dict[tuple[Key, int], list[Counter]] = defaultdict(list)
    seen: dict[tuple[Key, int], set[str]] = defaultdict(set)
    for (key, hour, visitor), entry in facts(beacons).items():
        per_hour[(key, hour)].append(entry)
        seen[(key, hour)].add(visitor)
    result = {}
    for (key, hour), entries in per_hour.items():
        values = {m: float(sum(e[m] for e in entries)) for m in SUMMED}
        values["visitors"] = float(len(seen[(key, hour)]))
        day: set[str] = set()
        for back in range(DAY_HOURS):
            day |= seen.get((key, hour - back), set())
        values["visitors_24h"] = float(len(day))
        for metric in HOURLY_METRICS:
            result[(metric, *key, iso_of_hour(hour))] = values[metric]
    return result


# --- section 7: per-visitor sums and the scorecard -------------------------------------------


def _in_range(hour: int, hour_from: str | None, hour_to: str | None) -> bool:
    """Whether an hour index lies within the inclusive ISO bounds (None: unbounded)."""
    return (hour_from is None or hour >= hour_of_iso(hour_from)) and (
        hour_to is None or hour <= hour_of_iso(hour_to)
    )


def visitor_sums(
    beacons: Iterable[dict],
    experiment: str,
    population: str,
    hour_from: str | None = None,
    hour_to: str | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (variant, visitor) the sums of VISITOR_METRICS over the range, multi-variant kept."""
    result: dict[tuple[str, str], dict[str, float]] = {}
    for ((e, variant, p), hour, visitor), entry in facts(beacons).items():
        if e != experiment or p != population or not _in_range(hour, hour_from, hour_to):
            continue
        sums = result.setdefault((variant, visitor), dict.fromkeys(VISITOR_METRICS, 0.0))
        for metric in VISITOR_METRICS:
            sums[metric] += entry[metric]
    return result


def choose_control(variants: Iterable[str]) -> str:
    """`control` when present, else the alphabetically first variant."""
    names = sorted(set(variants))
    return "control" if "control" in names else names[0]


def _undefined(value: float | None) -> float | None:
    """A float, or None for a missing, NaN or infinite figure."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _comparison(
    metric: str,
    kind: str,
    names: tuple[str, str],
    values: tuple[float | None, float | None],
    sizes: tuple[int, int],
    interval: tuple[float | None, float | None],
    p_value: float | None,
    se: float | None = None,
) -> dict[str, Any]:
    """One comparison in the scorecard's JSON shape, with its Bayesian read-out (the adjusted
    p-values are added by `scorecard`, which sees the whole family)."""
    control_value, variant_value = values
    defined = control_value is not None and variant_value is not None
    difference = variant_value - control_value if defined else None
    lift = difference / control_value if difference is not None and control_value else None
    return {
        "metric": metric,
        "kind": kind,
        "control": names[0],
        "variant": names[1],
        "control_value": control_value,
        "variant_value": variant_value,
        "difference": difference,
        "lift": lift,
        "ci_low": _undefined(interval[0]),
        "ci_high": _undefined(interval[1]),
        "p_value": _undefined(p_value),
        "n_control": sizes[0],
        "n_variant": sizes[1],
        **bayes_readout(metric, difference, se),
    }


def welch(metric: str, names: tuple[str, str], control: list, variant: list) -> dict:
    """Welch's t-test of the per-visitor mean, variant minus control (95% interval)."""
    c, v = np.asarray(control, dtype=float), np.asarray(variant, dtype=float)
    means = (float(c.mean()) if len(c) else None, float(v.mean()) if len(v) else None)
    interval, p_value, se = (None, None), None, None
    if len(c) >= 2 and len(v) >= 2 and c.var(ddof=1) / len(c) + v.var(ddof=1) / len(v) > 0:
        test = stats.ttest_ind(v, c, equal_var=False)
        ci = test.confidence_interval(confidence_level=1 - ALPHA)
        interval, p_value = (ci.low, ci.high), test.pvalue
        se = math.sqrt(c.var(ddof=1) / len(c) + v.var(ddof=1) / len(v))
    return _comparison(metric, "mean", names, means, (len(c), len(v)), interval, p_value, se)


def ratio_and_variance(num: list, den: list) -> tuple[float | None, float | None]:
    """Σnum / Σden and its delta-method variance (σy² − 2Rσxy + R²σx²) / (n μx²)."""
    y, x = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    n = len(x)
    if n == 0 or x.sum() == 0:
        return None, None
    ratio = float(y.sum() / x.sum())
    if n < 2:
        return ratio, None
    mx, my = x.mean(), y.mean()
    var_x = float(((x - mx) ** 2).sum() / (n - 1))
    var_y = float(((y - my) ** 2).sum() / (n - 1))
    cov_xy = float(((x - mx) * (y - my)).sum() / (n - 1))
    variance = (var_y - 2 * ratio * cov_xy + ratio**2 * var_x) / (n * mx**2)
    # It is Var(y - R x) / (n μx²) >= 0: a negative value is rounding of an exact zero.
    return ratio, max(variance, 0.0)


def delta(metric: str, names: tuple[str, str], control: list[dict], variant: list[dict]) -> dict:
    """Difference of two ratio metrics: delta-method variances, normal 95% interval."""
    num, den = RATIO_METRICS[metric]
    c_ratio, c_var = ratio_and_variance([s[num] for s in control], [s[den] for s in control])
    v_ratio, v_var = ratio_and_variance([s[num] for s in variant], [s[den] for s in variant])
    interval, p_value, se = (None, None), None, None
    if None not in (c_ratio, v_ratio, c_var, v_var) and c_var + v_var > 0:
        difference, se = v_ratio - c_ratio, math.sqrt(c_var + v_var)
        z = stats.norm.ppf(1 - ALPHA / 2)
        interval = (difference - z * se, difference + z * se)
        p_value = 2 * stats.norm.sf(abs(difference) / se)
    sizes = (len(control), len(variant))
    values = (c_ratio, v_ratio)
    return _comparison(metric, "ratio", names, values, sizes, interval, p_value, se)


def srm(counts: Mapping[str, int], weights: Mapping[str, float] | None = None) -> dict:
    """Chi-square goodness of fit of visitors per variant; flagged when p < 0.001."""
    shares = dict.fromkeys(counts, 1.0) if weights is None else dict(weights)
    missing = sorted(set(counts) - set(shares))
    if missing:
        raise ValueError(f"no SRM weight for the variants {missing}")
    names = sorted(shares)
    observed = {name: int(counts.get(name, 0)) for name in names}
    total, weight_sum = sum(observed.values()), sum(shares.values())
    expected = {name: total * shares[name] / weight_sum for name in names}
    chi2 = p_value = None
    if len(names) >= 2 and total > 0:
        test = stats.chisquare([observed[n] for n in names], [expected[n] for n in names])
        chi2, p_value = float(test.statistic), float(test.pvalue)
    flagged = p_value is not None and p_value < SRM_THRESHOLD
    return {
        "counts": observed,
        "expected": expected,
        "chi2": chi2,
        "p_value": p_value,
        "flagged": flagged,
    }


# Capping, corrections and the Bayesian read-out, as `expo_platform.analysis.stats` documents
# them: orders, units and revenue capped from above at the q-th percentile (linear
# interpolation between order statistics) of every assigned visitor's sum; Holm and
# Benjamini-Hochberg over every defined p-value of the scorecard; the posterior of the
# difference Normal(d, se^2), read in the direction where the metric gets better.
CAPPED = ("orders", "units", "revenue")
LOWER_IS_BETTER = ("bounce_rate", "error_rate")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the sorted values."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def cap_arms(arms: dict[str, list[dict]], q: float | None) -> dict[str, Any]:
    """Cap CAPPED in place at the pooled q-th percentile; the scorecard's `capping` block."""
    block: dict[str, Any] = {"percentile": None, "caps": {}, "visitors_capped": {}}
    if not q:
        return block
    block["percentile"] = float(q)
    everyone = [sums for arm in arms.values() for sums in arm]
    for metric in CAPPED:
        if not everyone:
            continue
        cap = percentile([sums[metric] for sums in everyone], q)
        block["caps"][metric] = cap
        block["visitors_capped"][metric] = sum(1 for sums in everyone if sums[metric] > cap)
        for sums in everyone:
            sums[metric] = min(sums[metric], cap)
    return block


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni: the i-th smallest of m p-values times (m - i + 1), made monotone."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, running = len(ranked), 0.0
    adjusted: list[float | None] = [None] * len(p_values)
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg: the i-th smallest of m p-values times m / i, monotone from the top."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, running = len(ranked), 1.0
    adjusted: list[float | None] = [None] * len(p_values)
    for rank in range(m, 0, -1):
        p, i = ranked[rank - 1]
        running = min(running, m * p / rank)
        adjusted[i] = running
    return adjusted


def bayes_readout(metric: str, difference: float | None, se: float | None) -> dict[str, Any]:
    """Chance to beat control and expected losses under Normal(difference, se^2)."""
    if difference is None or not se:
        return dict.fromkeys(("chance_to_beat_control", "expected_loss", "expected_loss_control"))
    gain = -difference if metric in LOWER_IS_BETTER else difference
    z = gain / se
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return {
        "chance_to_beat_control": cdf,
        "expected_loss": max(se * pdf - gain * (1 - cdf), 0.0),
        "expected_loss_control": max(se * pdf + gain * cdf, 0.0),
    }


def scorecard(
    beacons: Iterable[dict],
    experiment: str,
    population: str,
    hour_from: str | None = None,
    hour_to: str | None = None,
    weights: Mapping[str, float] | None = None,
    cap_percentile: float | None = None,
) -> dict[str, Any]:
    """The scorecard of an experiment and population over the range (stats.scorecard's shape)."""
    sums = visitor_sums(beacons, experiment, population, hour_from, hour_to)
    variants_of: dict[str, set[str]] = defaultdict(set)
    for variant, visitor in sums:
        variants_of[visitor].add(variant)
    arms: dict[str, list[dict]] = defaultdict(list)
    for (variant, visitor), visitor_metrics in sorted(sums.items()):
        if len(variants_of[visitor]) == 1:
            arms[variant].append(visitor_metrics)
    counts = {name: len(arms[name]) for name in sorted(arms)}
    capping = cap_arms(arms, cap_percentile)
    control = choose_control(counts) if counts else None
    comparisons = []
    for name in counts:
        if name == control:
            continue
        pair = (control, name)
        for metric in MEAN_METRICS:
            values = ([s[metric] for s in arms[control]], [s[metric] for s in arms[name]])
            comparisons.append(welch(metric, pair, *values))
        for metric in RATIO_METRICS:
            comparisons.append(delta(metric, pair, arms[control], arms[name]))
    raw = [c["p_value"] for c in comparisons]
    for c, h, b in zip(comparisons, holm(raw), benjamini_hochberg(raw), strict=True):
        c["p_value_holm"], c["p_value_bh"] = h, b
    return {
        "control": control,
        "alpha": ALPHA,
        "capping": capping,
        "visitors_multi_variant": sum(1 for v in variants_of.values() if len(v) > 1),
        "variants": {name: {"visitors": n} for name, n in counts.items()},
        "srm": srm(counts, weights),
        "comparisons": comparisons,
    }


# --- comparing with the project's scorecard --------------------------------------------------


def _is_undefined(value: Any) -> bool:
    """None and NaN both mean "undefined"."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _differences(ours: Any, theirs: Any, path: str, tol: float) -> list[str]:
    """Every field of `ours` that `theirs` lacks or holds differently, by path."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: {ours!r} != {theirs!r}"]
        found = []
        for name, value in ours.items():
            where = f"{path}.{name}" if path else name
            if name not in theirs:
                found.append(f"{where}: missing from the project's scorecard")
            else:
                found += _differences(value, theirs[name], where, tol)
        return found
    if _is_undefined(ours) or _is_undefined(theirs):
        same = _is_undefined(ours) and _is_undefined(theirs)
    elif isinstance(ours, bool) or isinstance(theirs, bool) or isinstance(ours, str):
        same = ours == theirs
    elif isinstance(ours, int | float) and isinstance(theirs, int | float):
        same = math.isclose(ours, theirs, rel_tol=tol, abs_tol=tol)
    else:
        same = ours == theirs
    return [] if same else [f"{path}: ours {ours!r} != project {theirs!r}"]


def compare_scorecards(ours: dict, project: dict, tol: float = 1e-9) -> list[str]:
    """Every field where the two scorecards differ (empty when equal), to `tol` relative.

    Fields only the project has (e.g. its always-valid `seq_ci_*`, `planned_n`) are not
    compared; comparisons are matched by (metric, variant).
    """
    top = {k: v for k, v in ours.items() if k != "comparisons"}
    found = _differences(top, project, "", tol)

    def by_key(card: dict) -> dict[tuple[str, str], dict]:
        return {(c["metric"], c["variant"]): c for c in card.get("comparisons", [])}

    mine, theirs = by_key(ours), by_key(project)
    for key in sorted(set(mine) | set(theirs)):
        where = f"comparisons[{key[0]}, {key[1]}]"
        if key not in theirs:
            found.append(f"{where}: missing from the project's scorecard")
        elif key not in mine:
            found.append(f"{where}: only in the project's scorecard")
        else:
            found += _differences(mine[key], theirs[key], where, tol)
    return found
