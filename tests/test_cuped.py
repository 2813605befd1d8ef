"""CUPED (issue 27, item 1): the statistics by hand, an A/A simulation, the experiment-free
visitor totals on adversarial traffic, and a two-day generated lake through Spark against
the oracle (`tests/reference_cuped.py`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import date, timedelta
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from expo_platform.analysis import cuped, stats
from expo_platform.analysis.pre_period import visitor_totals
from expo_platform.analysis.scorecards import VISITOR_METRICS
from expo_platform.batch import steps
from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, hour_start_ms, parse_hour
from expo_platform.devtools.generator import GeneratorConfig, iter_lines
from expo_platform.lake import union_all
from tests import reference, reference_cuped
from tests.clickstream import H0, chain_sessions
from tests.helpers import generated_lake
from tests.test_scorecards import ADVERSARIAL, HOURS

# --- by hand --------------------------------------------------------------------------------

# Per-visitor values y and pre-period values x of a small experiment.
Y_C, X_C = [2, 0, 4], [1, 0, 3]
Y_V, X_V = [3, 5, 1, 3], [2, 3, 0, 1]


def _var(values: list[Fraction]) -> Fraction:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_cuped_mean_by_hand():
    # Pooled: sum x = 10, sum y = 18, sum xy = 38, sum x^2 = 24, n = 7, so
    # S_xy = 38 - 10 * 18 / 7 = 86/7 and S_xx = 24 - 100/7 = 68/7: theta = 86/68 = 43/34.
    theta = Fraction(43, 34)
    x_bar = Fraction(10, 7)
    # Adjusted means: ybar - theta (xbar - 10/7): control 2 - theta (4/3 - 10/7) = 2 + 43/357,
    # variant 3 - theta (3/2 - 10/7) = 3 - 43/476.
    control, variant = 2 + Fraction(43, 357), 3 - Fraction(43, 476)
    adj_c = [y - theta * (x - x_bar) for y, x in zip(Y_C, X_C, strict=True)]
    adj_v = [y - theta * (x - x_bar) for y, x in zip(Y_V, X_V, strict=True)]
    assert sum(adj_c) / 3 == control and sum(adj_v) / 4 == variant
    var_adj = _var(adj_c) / 3 + _var(adj_v) / 4
    var = _var([Fraction(y) for y in Y_C]) / 3 + _var([Fraction(y) for y in Y_V]) / 4
    assert var == Fraction(4, 3) + Fraction(8, 12)  # variances 4 and 8/3

    got = cuped.cuped_mean(np.array(Y_C), np.array(X_C), np.array(Y_V), np.array(X_V))
    assert got.theta == pytest.approx(float(theta), rel=1e-12)
    assert got.control_value == pytest.approx(float(control), rel=1e-12)
    assert got.variant_value == pytest.approx(float(variant), rel=1e-12)
    assert got.difference == pytest.approx(float(variant - control), rel=1e-12)
    assert got.variance_reduction == pytest.approx(float(1 - var_adj / var), rel=1e-12)
    # Welch on the adjusted values: df = (a + b)^2 / (a^2 / 2 + b^2 / 3).
    a, b = float(_var(adj_c) / 3), float(_var(adj_v) / 4)
    df = (a + b) ** 2 / (a * a / 2 + b * b / 3)
    half = float(scipy_stats.t.ppf(0.975, df)) * math.sqrt(a + b)
    assert got.ci_low == pytest.approx(float(variant - control) - half, rel=1e-9)
    assert got.ci_high == pytest.approx(float(variant - control) + half, rel=1e-9)


def test_cuped_ratio_by_hand():
    # Bounce rate: bounces / visits per visitor, now and before exposure.
    num_c, den_c, pre_num_c, pre_den_c = [1, 0, 2], [2, 1, 3], [1, 0, 1], [1, 0, 2]
    num_v, den_v, pre_num_v, pre_den_v = [0, 1, 1, 0], [1, 2, 1, 2], [0, 1, 0, 0], [1, 1, 0, 2]
    # Control R = 3/6 = 1/2, mean visits 2: L = 1/2 + (b - v/2) / 2.
    lc = [
        Fraction(1, 2) + (Fraction(y) - Fraction(x, 2)) / 2
        for y, x in zip(num_c, den_c, strict=True)
    ]
    # Variant R = 2/6 = 1/3, mean visits 3/2: L = 1/3 + (b - v/3) / (3/2).
    lv = [
        Fraction(1, 3) + (y - Fraction(x, 3)) / Fraction(3, 2)
        for y, x in zip(num_v, den_v, strict=True)
    ]
    # Pre-period, both arms pooled: R0 = 3/7, mean visits 1: M = 3/7 + (b0 - 3/7 v0).
    pre = [
        Fraction(3, 7) + (y - Fraction(3, 7) * x)
        for y, x in zip(pre_num_c + pre_num_v, pre_den_c + pre_den_v, strict=True)
    ]
    pooled_l, m_bar = lc + lv, sum(pre) / 7
    l_bar = sum(pooled_l) / 7
    theta = sum((m - m_bar) * (v - l_bar) for m, v in zip(pre, pooled_l, strict=True)) / sum(
        (m - m_bar) ** 2 for m in pre
    )
    diff = (sum(lv) / 4 - sum(lc) / 3) - theta * (sum(pre[3:]) / 4 - sum(pre[:3]) / 3)
    adj_c = [v - theta * m for v, m in zip(lc, pre[:3], strict=True)]
    adj_v = [v - theta * m for v, m in zip(lv, pre[3:], strict=True)]
    var_adj = _var(adj_c) / 3 + _var(adj_v) / 4
    var = _var(lc) / 3 + _var(lv) / 4
    got = cuped.cuped_ratio(
        (np.array(num_c), np.array(den_c)),
        (np.array(pre_num_c), np.array(pre_den_c)),
        (np.array(num_v), np.array(den_v)),
        (np.array(pre_num_v), np.array(pre_den_v)),
    )
    assert got.theta == pytest.approx(float(theta), rel=1e-12)
    assert got.difference == pytest.approx(float(diff), rel=1e-12)
    assert got.variance_reduction == pytest.approx(float(1 - var_adj / var), rel=1e-12)
    assert got.ci_high - got.difference == pytest.approx(1.959963984540054 * math.sqrt(var_adj))
    # Var(L) / n is the delta method's variance of each arm's ratio.
    _, delta_c = stats.ratio_variance(np.array(num_c), np.array(den_c))
    assert float(_var(lc) / 3) == pytest.approx(delta_c, rel=1e-12)


def _rows(y_c, x_c, y_v, x_v) -> pd.DataFrame:
    """Scorecard rows whose orders (and pre_orders) are the given values."""
    rows = []
    for variant, ys, xs in (("control", y_c, x_c), ("treatment", y_v, x_v)):
        for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
            row = {"visitor_id": f"{variant}-{i}", "variant": variant}
            row.update({m: 1 for m in VISITOR_METRICS})
            row.update({f"pre_{m}": 1 for m in VISITOR_METRICS})
            row.update(orders=y, pre_orders=x, visits=2 + i % 2, pre_visits=i % 3)
            rows.append(row)
    return pd.DataFrame(rows)


def test_scorecard_carries_the_cuped_fields():
    rows = _rows(Y_C, X_C, Y_V, X_V)
    card = stats.scorecard(rows, cuped_days=7)
    assert card["cuped"] == {
        "days": 7,
        "visitors_with_pre_period": {"control": 3, "treatment": 4},
    }
    orders = next(c for c in card["comparisons"] if c["metric"] == "orders")
    assert orders["cuped_theta"] == pytest.approx(43 / 34)
    assert orders["cuped_difference"] == pytest.approx((3 - 43 / 476) - (2 + 43 / 357))
    assert all(f"cuped_{k}" in c for c in card["comparisons"] for k in cuped.FIELDS)
    json.dumps(card, allow_nan=False)
    off = stats.scorecard(rows, cuped_days=0)
    assert off["cuped"] == {"days": None, "visitors_with_pre_period": {}}
    assert all(c[f"cuped_{k}"] is None for c in off["comparisons"] for k in cuped.FIELDS)
    # Without covariates (no pre_ columns) CUPED is off too, and nothing else changes.
    plain = stats.scorecard(rows[[c for c in rows.columns if not c.startswith("pre_")]])
    assert plain["comparisons"] == off["comparisons"]


# --- A/A simulation -------------------------------------------------------------------------


def test_aa_simulation_narrower_intervals_same_false_positive_rate():
    """1,500 A/A experiments with a pre-period that predicts the outcome: CUPED intervals are
    much narrower, and the share of p < 0.05 stays within binomial bounds of 5%."""
    rng = np.random.default_rng(20260302)
    runs, n = 1500, 200
    widths, plain_widths, hits, plain_hits, ratio_hits = [], [], 0, 0, 0
    for _ in range(runs):
        rate = rng.gamma(2.0, 1.0, size=2 * n)  # a visitor's lasting propensity
        pre = rng.poisson(rate)
        post = rng.poisson(rate)
        c, v = slice(0, n), slice(n, 2 * n)
        got = cuped.cuped_mean(post[c], pre[c], post[v], pre[v])
        plain = stats.welch("orders", "c", "v", post[c], post[v])
        widths.append(got.ci_high - got.ci_low)
        plain_widths.append(plain.ci_high - plain.ci_low)
        hits += got.p_value < 0.05
        plain_hits += plain.p_value < 0.05
        visits, pre_visits = 1 + rng.poisson(rate), 1 + rng.poisson(rate)
        ratio = cuped.cuped_ratio(
            (post[c], visits[c]),
            (pre[c], pre_visits[c]),
            (post[v], visits[v]),
            (pre[v], pre_visits[v]),
        )
        ratio_hits += ratio.p_value < 0.05
    # Binomial(1500, 0.05): mean 75, sd 8.4; 3.5 sd either side.
    low, high = 75 - 3.5 * math.sqrt(runs * 0.05 * 0.95), 75 + 3.5 * math.sqrt(runs * 0.05 * 0.95)
    assert low <= hits <= high, hits
    assert low <= plain_hits <= high, plain_hits
    assert low <= ratio_hits <= high, ratio_hits
    # Corr(pre, post) = Var(rate) / (Var(rate) + E[rate]) = 2/4: variance down by 25%.
    assert np.mean(widths) / np.mean(plain_widths) < 0.9
    assert (
        all(w < p for w, p in zip(widths, plain_widths, strict=True))
        or np.mean(np.array(widths) < np.array(plain_widths)) > 0.95
    )


# --- visitor totals on adversarial traffic --------------------------------------------------


def test_visitor_totals_on_adversarial_traffic_equal_the_oracle(spark):
    """Visits over hours, 12-hour cuts, reloaded orders, two visitors in a session: the
    experiment-free totals are the oracle's, and every visitor here is in the experiment
    so they are its visitor sums too."""
    sessions, by_hour = chain_sessions(spark, ADVERSARIAL, HOURS + 1)
    counted = []
    for h, lines in by_hour.items():
        if lines:
            frame = spark.createDataFrame([(line,) for line in lines], "value string")
            index = (hour_start_ms(H0) + h * HOUR_MS) // HOUR_MS
            counted.append(bc.counted_beacons(bc.classify_hour(frame, index)))
    all_sessions = union_all(sessions)
    got = {
        r["visitor_id"]: {m: float(r[m]) for m in VISITOR_METRICS}
        for r in visitor_totals(union_all(counted), all_sessions, all_sessions).collect()
    }
    beacons = [b for b in ADVERSARIAL if b["event_id"] != "dup-1"] + [
        next(b for b in ADVERSARIAL if b["event_id"] == "dup-1")
    ]
    expected: dict[str, Counter] = {}
    for (visitor, _), totals in reference_cuped.visitor_day_totals(beacons).items():
        expected.setdefault(visitor, Counter()).update(totals)
    assert set(got) == set(expected)
    for visitor, totals in expected.items():
        assert got[visitor] == {m: float(totals[m]) for m in VISITOR_METRICS}, visitor
    # v1 (in X throughout): its X sums are (5, 1, 0, 1, 1, 10.0, 0) in visitor_daily.
    assert [got["v1"][m] for m in VISITOR_METRICS] == [5, 1, 0, 1, 1, 10.0, 0]


# --- a two-day lake through Spark -----------------------------------------------------------

PRE_DAY, DAY = date(2026, 3, 1), date(2026, 3, 2)
FIRST = parse_hour("2026-03-01T20")
CONFIG = GeneratorConfig(
    start=FIRST,
    hours=8,  # 20:00-23:59 before the experiments start, 00:00-03:59 with them
    visitors=500,
    seed=5,
    experiments_from=parse_hour("2026-03-02T00"),
    propensity=1.0,
)


@pytest.fixture(scope="module")
def two_days(tmp_path_factory, session_lake, spark):
    settings, _ = generated_lake(tmp_path_factory.mktemp("cuped"), session_lake.spark.conf, CONFIG)
    for h in range(CONFIG.hours):
        hour = FIRST + timedelta(hours=h)
        steps.process_beacons(spark, settings, hour)
        steps.process_sessions(spark, settings, hour)
    for day in (PRE_DAY, DAY):
        steps.process_visitor_daily(spark, settings, day)
    steps.process_visitor_totals(spark, settings, PRE_DAY)
    return settings


def test_generator_defaults_unchanged_and_pre_period_untagged():
    base = GeneratorConfig(start=FIRST, hours=2, visitors=50, seed=3)
    same = GeneratorConfig(start=FIRST, hours=2, visitors=50, seed=3, propensity=0.0)
    assert list(iter_lines(base)) == list(iter_lines(same))
    start = hour_start_ms(CONFIG.experiments_from)
    tagged = Counter()
    for _, line, _ in iter_lines(CONFIG):
        beacon = json.loads(line)
        tagged[(beacon["ts"] >= start, bool(beacon["experiments"]))] += 1
    assert tagged[(False, True)] == 0  # no experiment before it starts
    assert tagged[(True, True)] > tagged[(True, False)] > 0  # visits begun before run on


def test_scorecard_cuped_fields_equal_the_oracle(two_days, spark):
    from expo_platform.analysis.daily import compute_scorecard

    settings = two_days
    assert steps.lake.VISITOR_TOTALS.days_present(settings) == [PRE_DAY]
    counted = reference.load_counted(settings.lake.landing_dir)
    for experiment in ("checkout-button", "search-ranking"):
        card = compute_scorecard(spark, settings, experiment, "assigned")
        assert card["cuped"] == {
            "days": 7,
            "visitors_with_pre_period": reference_cuped.visitors_with_pre_period(
                counted, experiment, "assigned", 7
            ),
        }
        assert sum(card["cuped"]["visitors_with_pre_period"].values()) > 50
        want = reference_cuped.cuped_comparisons(counted, experiment, "assigned", 7)
        got = {(c["metric"], c["variant"]): c for c in card["comparisons"]}
        assert set(want) == set(got)
        for key, fields in want.items():
            for name, value in fields.items():
                assert got[key][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, name)
        # The persistent visitors make the pre-period predictive: variance goes down.
        # (A weakly predictive covariate can cost a hair of variance, never much.)
        reductions = {
            (c["metric"], c["variant"]): c["cuped_variance_reduction"] for c in card["comparisons"]
        }
        assert min(reductions.values()) > -0.01, reductions
        assert max(reductions.values()) > 0.05, reductions
    # Without the materialized day, the scorecard computes the same totals from the sessions.
    steps.lake.VISITOR_TOTALS.remove_partition(settings, PRE_DAY)
    again = compute_scorecard(spark, settings, "checkout-button", "assigned")
    want = reference_cuped.cuped_comparisons(counted, "checkout-button", "assigned", 7)
    for c in again["comparisons"]:
        assert c["cuped_difference"] == pytest.approx(
            want[(c["metric"], c["variant"])]["cuped_difference"], rel=1e-9, abs=1e-12
        )
