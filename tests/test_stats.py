"""Experiment statistics checked against hand formulas, scipy directly and simulations."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from expo_platform.analysis.stats import (
    DEFAULT_PLANNED_N,
    MEAN_METRICS,
    RATIO_METRICS,
    assign_visitors,
    choose_control,
    confidence_sequence,
    cumulative_lift_path,
    delta_ratio,
    ratio_variance,
    scorecard,
    sequential_rho,
    srm,
    welch,
)

Z975 = 1.959963984540054


def normal_two_sided_p(z: float) -> float:
    """Two-sided normal p-value without scipy: erfc(|z| / sqrt 2)."""
    return math.erfc(abs(z) / math.sqrt(2))


# --- Welch -----------------------------------------------------------------------------------


def test_welch_matches_hand_formulas():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    variant = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    # By hand: means 2.5 and 6, sample variances 5/3 and 10.
    se2_c, se2_v = (5 / 3) / 4, 10 / 5
    se = math.sqrt(se2_c + se2_v)
    t = 3.5 / se
    df = (se2_c + se2_v) ** 2 / (se2_c**2 / 3 + se2_v**2 / 4)
    assert t == pytest.approx(2.2514363, rel=1e-7)
    assert df == pytest.approx(5.5207877, rel=1e-7)
    half = sps.t.ppf(0.975, df) * se

    result = welch("orders", "control", "B", control, variant)

    assert result.kind == "mean"
    assert (result.control_value, result.variant_value) == (2.5, 6.0)
    assert result.difference == 3.5
    assert result.lift == pytest.approx(1.4)
    assert result.p_value == pytest.approx(2 * sps.t.sf(t, df), rel=1e-9)
    assert result.p_value == pytest.approx(0.0691336, rel=1e-5)
    assert result.ci_low == pytest.approx(3.5 - half, rel=1e-9)
    assert result.ci_high == pytest.approx(3.5 + half, rel=1e-9)
    assert result.ci_low == pytest.approx(-0.3853681, rel=1e-6)
    assert result.ci_high == pytest.approx(7.3853681, rel=1e-6)
    assert (result.n_control, result.n_variant) == (4, 5)


def test_welch_alpha_changes_interval_only():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    variant = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    wide = welch("orders", "control", "B", control, variant, alpha=0.01)
    narrow = welch("orders", "control", "B", control, variant)
    assert wide.p_value == narrow.p_value
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low
    df = 5.520787746170677
    se = math.sqrt((5 / 3) / 4 + 2)
    assert wide.ci_high == pytest.approx(3.5 + sps.t.ppf(0.995, df) * se, rel=1e-9)


def test_welch_degenerate_groups_give_none_not_errors():
    empty = welch("orders", "control", "B", np.array([]), np.array([1.0, 2.0]))
    assert empty.control_value is None
    assert empty.difference is None and empty.lift is None
    assert empty.ci_low is None and empty.p_value is None and empty.seq_ci_low is None
    assert empty.variant_value == 1.5

    single = welch("orders", "control", "B", np.array([3.0]), np.array([1.0, 2.0]))
    assert single.difference == -1.5
    assert single.p_value is None and single.ci_low is None

    constant = welch("orders", "control", "B", np.zeros(5), np.ones(5))
    assert constant.difference == 1.0
    assert constant.lift is None  # control mean is 0
    assert constant.p_value is None and constant.ci_high is None
    json.dumps(constant.as_dict(), allow_nan=False)


# --- Delta method ----------------------------------------------------------------------------


def test_delta_ratio_matches_hand_case():
    num_c, den_c = [1.0, 0.0, 2.0, 1.0], [2.0, 1.0, 3.0, 2.0]
    num_v, den_v = [1.0, 1.0, 1.0], [1.0, 2.0, 1.0]

    def delta_var(y: list[float], x: list[float]) -> float:
        r = sum(y) / sum(x)
        s_yy = statistics.variance(y)
        s_xx = statistics.variance(x)
        s_xy = statistics.covariance(y, x)
        return (s_yy - 2 * r * s_xy + r * r * s_xx) / (len(x) * statistics.fmean(x) ** 2)

    # Worked by hand: control R = 4/8, variances 2/3 each and covariance 2/3 -> 1/96;
    # variant R = 3/4, constant numerator, var(x) = 1/3 -> (9/16 * 1/3) / (3 * 16/9) = 9/256.
    assert delta_var(num_c, den_c) == pytest.approx(1 / 96)
    assert delta_var(num_v, den_v) == pytest.approx(9 / 256)
    se = math.sqrt(1 / 96 + 9 / 256)
    assert se == pytest.approx(math.sqrt(35 / 768))

    result = delta_ratio(
        "bounce_rate", "control", "B", *map(np.array, (num_c, den_c, num_v, den_v))
    )

    assert result.kind == "ratio"
    assert (result.control_value, result.variant_value) == (0.5, 0.75)
    assert result.difference == pytest.approx(0.25)
    assert result.lift == pytest.approx(0.5)
    assert result.ci_low == pytest.approx(0.25 - Z975 * se, rel=1e-9)
    assert result.ci_high == pytest.approx(0.25 + Z975 * se, rel=1e-9)
    assert result.p_value == pytest.approx(normal_two_sided_p(0.25 / se), rel=1e-9)
    assert result.p_value == pytest.approx(0.24157, abs=1e-4)
    assert (result.n_control, result.n_variant) == (4, 3)

    ratio, variance = ratio_variance(np.array(num_c), np.array(den_c))
    assert (ratio, variance) == (0.5, pytest.approx(1 / 96))


def test_delta_standard_error_agrees_with_bootstrap():
    rng = np.random.default_rng(20240601)
    n = 2000

    def group(p_bounce: float) -> tuple[np.ndarray, np.ndarray]:
        visits = 1 + rng.poisson(1.5, n)
        return rng.binomial(visits, p_bounce).astype(float), visits.astype(float)

    num_c, den_c = group(0.40)
    num_v, den_v = group(0.42)
    result = delta_ratio("bounce_rate", "control", "B", num_c, den_c, num_v, den_v)
    delta_se = (result.ci_high - result.ci_low) / (2 * Z975)

    reps = 400
    idx_c = rng.integers(0, n, (reps, n))
    idx_v = rng.integers(0, n, (reps, n))
    boot = num_v[idx_v].sum(1) / den_v[idx_v].sum(1) - num_c[idx_c].sum(1) / den_c[idx_c].sum(1)
    boot_se = boot.std(ddof=1)

    assert 0.005 < delta_se < 0.03  # the figure is of the expected order at all
    assert delta_se == pytest.approx(boot_se, rel=0.10)


def test_delta_ratio_zero_denominators_and_empty_groups():
    zeros = np.zeros(3)
    some = np.array([1.0, 2.0, 3.0])
    no_visits = delta_ratio("bounce_rate", "control", "B", zeros, zeros, some, some)
    assert no_visits.control_value is None
    assert no_visits.variant_value == 1.0
    assert no_visits.difference is None and no_visits.lift is None
    assert no_visits.ci_low is None and no_visits.ci_high is None and no_visits.p_value is None
    assert no_visits.seq_ci_low is None and no_visits.seq_ci_high is None
    assert (no_visits.n_control, no_visits.n_variant) == (3, 3)

    empty = np.array([])
    nobody = delta_ratio("error_rate", "control", "B", empty, empty, some, some)
    assert nobody.control_value is None and nobody.p_value is None and nobody.n_control == 0

    # Zero control ratio: a difference exists but the lift does not.
    zero_ratio = delta_ratio("error_rate", "control", "B", zeros, some, some, some)
    assert zero_ratio.control_value == 0.0
    assert zero_ratio.difference == 1.0
    assert zero_ratio.lift is None
    # Every visitor has the same ratio in both groups: no variance, so no test.
    assert zero_ratio.p_value is None and zero_ratio.ci_low is None

    for comparison in (no_visits, nobody, zero_ratio):
        json.dumps(comparison.as_dict(), allow_nan=False)


# --- Sample-ratio mismatch -------------------------------------------------------------------


def test_srm_two_variants_by_hand():
    result = srm({"control": 1000, "B": 1200})
    # Expected 1100 each: chi2 = 100^2/1100 + 100^2/1100 = 18.1818...; 1 df.
    chi2 = 2 * 100**2 / 1100
    assert result.expected == {"B": 1100.0, "control": 1100.0}
    assert result.chi2 == pytest.approx(chi2)
    assert result.chi2 == pytest.approx(18.181818, rel=1e-7)
    # The chi-square(1) tail is the two-sided normal tail of sqrt(chi2).
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    assert result.p_value == pytest.approx(2.0079e-5, rel=1e-3)
    assert result.flagged is True

    close = srm({"control": 1000, "B": 1050})
    assert close.chi2 == pytest.approx(2 * 25**2 / 1025)
    assert close.p_value == pytest.approx(math.erfc(math.sqrt(2 * 25**2 / 1025 / 2)))
    assert close.p_value == pytest.approx(0.26949, abs=1e-4)
    assert close.flagged is False


def test_srm_matches_scipy_and_flags_only_below_threshold():
    counts = {"control": 5100, "B": 4950, "C": 4890}
    result = srm(counts)
    direct = sps.chisquare([4950, 4890, 5100])
    assert result.chi2 == pytest.approx(direct.statistic)
    assert result.p_value == pytest.approx(direct.pvalue)
    assert result.p_value == pytest.approx(0.0954266, rel=1e-5)
    assert result.flagged is False

    # Just either side of p = 0.001 for two arms (critical chi2 = 10.828 at 1 df).
    n = 10000
    for diff, flagged in ((460, False), (470, True)):
        split = srm({"control": n + diff // 2, "B": n - diff // 2})
        assert split.chi2 == pytest.approx(diff**2 / (2 * n))
        assert split.flagged is flagged


def test_srm_custom_weights():
    weights = {"control": 2.0, "B": 1.0, "C": 1.0}
    exact = srm({"control": 2000, "B": 1000, "C": 1000}, weights)
    assert exact.expected == {"B": 1000.0, "C": 1000.0, "control": 2000.0}
    assert exact.chi2 == 0.0 and exact.p_value == pytest.approx(1.0)
    assert exact.flagged is False

    # An equal split would be a huge mismatch under these weights.
    equal = srm({"control": 1333, "B": 1333, "C": 1334}, weights)
    direct = sps.chisquare([1333, 1334, 1333], [1000, 1000, 2000])
    assert equal.chi2 == pytest.approx(direct.statistic)
    assert equal.chi2 == pytest.approx(333**2 / 1000 + 334**2 / 1000 + 667**2 / 2000)
    assert equal.flagged is True

    # Weights on another scale give the same test.
    assert srm(
        {"control": 1333, "B": 1333, "C": 1334}, {"control": 0.5, "B": 0.25, "C": 0.25}
    ).chi2 == pytest.approx(equal.chi2)


def test_srm_weights_must_cover_observed_variants():
    with pytest.raises(ValueError, match=r"do not cover the observed variants \['C'\]"):
        srm({"control": 10, "B": 10, "C": 10}, {"control": 1, "B": 1})
    with pytest.raises(ValueError, match="must be positive"):
        srm({"control": 10, "B": 10}, {"control": 1, "B": 0})


def test_srm_weighted_variant_without_visitors_counts_as_zero():
    result = srm({"control": 100}, {"control": 1, "B": 1})
    assert result.counts == {"control": 100, "B": 0}
    assert result.chi2 == pytest.approx(100.0)  # 50^2/50 + 50^2/50
    assert result.flagged is True


def test_srm_single_variant_is_not_testable():
    result = srm({"control": 100})
    assert result.chi2 is None and result.p_value is None and result.flagged is False


# --- Control and assignment ------------------------------------------------------------------


def test_choose_control():
    assert choose_control(["B", "control", "A"]) == "control"
    assert choose_control(["treatment", "baseline", "zeta"]) == "baseline"
    assert choose_control(iter(["b", "a", "b"])) == "a"
    with pytest.raises(ValueError, match="no variants"):
        choose_control([])


def _row(visitor: str, variant: str, hour: int, **metrics: float) -> dict:
    base = dict.fromkeys(
        ("page_views", "visits", "bounces", "orders", "units", "revenue", "errors"), 0
    )
    return {"visitor_id": visitor, "variant": variant, "first_hour": hour, **base, **metrics}


def test_assign_visitors_sums_and_excludes_multi_variant():
    rows = pd.DataFrame(
        [
            _row("v1", "control", 1, page_views=3, visits=1, orders=1, revenue=10.0),
            _row("v1", "control", 2, page_views=2, visits=1, bounces=1, errors=1),
            _row("v2", "B", 1, page_views=1, visits=1, bounces=1),
            _row("v3", "B", 2, page_views=4, visits=2, units=3, orders=1, revenue=7.5),
            _row("v3", "B", 3, page_views=1, visits=1, revenue=2.5),
            _row("m1", "control", 1, page_views=9, visits=9),
            _row("m1", "B", 2, page_views=9, visits=9),
            _row("m2", "B", 1, page_views=1, visits=1),
            _row("m2", "C", 1, page_views=1, visits=1),
        ]
    )
    per_visitor, multi = assign_visitors(rows)
    assert multi == 2
    assert list(per_visitor["visitor_id"]) == ["v1", "v2", "v3"]
    assert list(per_visitor["variant"]) == ["control", "B", "B"]
    v1, v2, v3 = (per_visitor.iloc[i] for i in range(3))
    assert (v1.page_views, v1.visits, v1.bounces, v1.orders, v1.errors) == (5, 2, 1, 1, 1)
    assert v1.revenue == 10.0 and v1.first_hour == 1
    assert (v2.page_views, v2.visits, v2.bounces) == (1, 1, 1)
    assert (v3.page_views, v3.visits, v3.units, v3.orders) == (5, 3, 3, 1)
    assert v3.revenue == 10.0 and v3.first_hour == 2


def test_assign_visitors_requires_metric_columns():
    rows = pd.DataFrame({"visitor_id": ["a"], "variant": ["control"], "orders": [1]})
    with pytest.raises(ValueError, match="missing columns"):
        assign_visitors(rows)


# --- Always-valid intervals ------------------------------------------------------------------


def test_confidence_sequence_formula_and_default_rho():
    rho = math.sqrt((-2 * math.log(0.05) + math.log(1 - 2 * math.log(0.05))) / 5000)
    assert DEFAULT_PLANNED_N == 5000
    assert sequential_rho() == pytest.approx(rho)
    assert sequential_rho() == pytest.approx(0.0398401, rel=1e-5)

    n, se = 2000, 0.1
    sigma = se * math.sqrt(n)
    expected = sigma * math.sqrt(
        2 * (n * rho**2 + 1) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / 0.05)
    )
    assert confidence_sequence(se, n) == pytest.approx(expected, rel=1e-12)
    # About 3.12 standard errors here, against 1.96 for the fixed-horizon interval.
    assert confidence_sequence(se, n) / se == pytest.approx(3.1245, abs=1e-3)
    assert confidence_sequence(0.0, n) is None
    assert confidence_sequence(float("nan"), n) is None


def test_sequential_half_width_shrinks_with_n():
    sigma = 2.0
    sizes = [10, 50, 100, 500, 1000, 5000, 20000, 100000, 1000000]
    widths = [confidence_sequence(sigma / math.sqrt(n), n) for n in sizes]
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    # Always wider than the normal fixed-horizon half-width at the same n.
    assert all(w > Z975 * sigma / math.sqrt(n) for w, n in zip(widths, sizes, strict=True))

    # And on data: the always-valid interval narrows as the same experiment accrues visitors.
    rng = np.random.default_rng(7)
    control, variant = rng.exponential(3.0, 20000), rng.exponential(3.0, 20000)
    seq_widths = []
    for n in (100, 400, 1600, 6400, 20000):
        result = welch("revenue", "control", "B", control[:n], variant[:n])
        seq_widths.append(result.seq_ci_high - result.seq_ci_low)
    assert all(a > b for a, b in zip(seq_widths, seq_widths[1:], strict=False))


def test_sequential_interval_wider_than_fixed_interval():
    rng = np.random.default_rng(11)
    for n in (3, 20, 200, 5000, 50000):
        c, v = rng.poisson(1.0, n).astype(float), rng.poisson(1.1, n).astype(float)
        mean = welch("orders", "control", "B", c, v)
        assert mean.seq_ci_low < mean.ci_low < mean.difference < mean.ci_high < mean.seq_ci_high
        visits_c, visits_v = 1.0 + rng.poisson(1.0, n), 1.0 + rng.poisson(1.0, n)
        ratio = delta_ratio(
            "bounce_rate", "control", "B",
            rng.binomial(visits_c.astype(int), 0.4).astype(float), visits_c,
            rng.binomial(visits_v.astype(int), 0.4).astype(float), visits_v,
        )  # fmt: skip
        assert ratio.seq_ci_low < ratio.ci_low < ratio.ci_high < ratio.seq_ci_high
    # Tuned for a tiny experiment, the asymptotic boundary (~3.04 se) falls below the Welch
    # t quantile of two units per arm: the always-valid interval is then the fixed one.
    tiny = welch("orders", "control", "B", np.array([0.0, 1.0]), np.array([1.0, 3.0]), planned_n=4)
    se = math.sqrt(0.5 / 2 + 2.0 / 2)  # sample variances 0.5 and 2, two units each
    assert confidence_sequence(se, 4, planned_n=4) / se == pytest.approx(3.035, abs=1e-3)
    assert tiny.ci_high - tiny.difference > 6 * se  # t quantile at ~1.6 df
    assert (tiny.seq_ci_low, tiny.seq_ci_high) == (tiny.ci_low, tiny.ci_high)


def test_aa_peeking_false_positive_rates():
    rng = np.random.default_rng(12345)
    repetitions, looks, per_look = 200, 10, 100
    fixed_hits = seq_hits = 0
    for _ in range(repetitions):
        control = rng.normal(5.0, 2.0, looks * per_look)
        variant = rng.normal(5.0, 2.0, looks * per_look)
        fixed_any = seq_any = False
        for look in range(1, looks + 1):
            n = look * per_look
            r = welch("revenue", "control", "B", control[:n], variant[:n])
            fixed_any |= not r.ci_low <= 0 <= r.ci_high
            seq_any |= not r.seq_ci_low <= 0 <= r.seq_ci_high
        fixed_hits += fixed_any
        seq_hits += seq_any
    fixed_rate, seq_rate = fixed_hits / repetitions, seq_hits / repetitions
    # Ten peeks at a fixed 95% interval reject a true null far more often than 5%.
    assert fixed_rate > 0.10
    assert seq_rate < 0.05
    assert seq_rate < fixed_rate / 3


# --- Scorecard and trend ---------------------------------------------------------------------


def _traffic(seed: int, variants: dict[str, int], hours: int = 4) -> pd.DataFrame:
    """Visitor-hour rows with visits, bounces, page views, errors, orders and revenue."""
    rng = np.random.default_rng(seed)
    frames = []
    for variant, n in variants.items():
        visits = 1 + rng.poisson(0.5, n)
        page_views = visits + rng.poisson(2.0, n)
        orders = rng.binomial(1, 0.1, n)
        frames.append(
            pd.DataFrame(
                {
                    "visitor_id": [f"{variant}-{i}" for i in range(n)],
                    "variant": variant,
                    "first_hour": rng.integers(0, hours, n),
                    "page_views": page_views,
                    "visits": visits,
                    "bounces": rng.binomial(visits, 0.3),
                    "orders": orders,
                    "units": orders * 2,
                    "revenue": orders * rng.gamma(2.0, 20.0, n),
                    "errors": rng.binomial(page_views, 0.02),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_scorecard_shape_and_figures():
    rows = _traffic(3, {"control": 800, "B": 820, "C": 790})
    # One visitor split over two rows, one seen in two variants.
    extra = rows.iloc[[0]].assign(page_views=1, visits=0, bounces=0, orders=0, revenue=0.0)
    switcher = rows.iloc[[1]].assign(variant="B")
    rows_in = pd.concat([rows, extra, switcher], ignore_index=True)

    card = scorecard(rows_in, weights={"control": 1, "B": 1, "C": 1})
    json.dumps(card, allow_nan=False)

    assert card["control"] == "control"
    assert card["visitors_multi_variant"] == 1
    assert card["variants"] == {
        "B": {"visitors": 820},
        "C": {"visitors": 790},
        "control": {"visitors": 799},
    }
    direct_srm = sps.chisquare([820, 790, 799])
    assert card["srm"]["chi2"] == pytest.approx(direct_srm.statistic)
    assert card["srm"]["p_value"] == pytest.approx(direct_srm.pvalue)
    assert card["srm"]["flagged"] is False

    comparisons = card["comparisons"]
    per_variant = len(MEAN_METRICS) + len(RATIO_METRICS)
    assert per_variant == 7
    assert len(comparisons) == 2 * per_variant
    assert [c["variant"] for c in comparisons] == ["B"] * 7 + ["C"] * 7
    assert [c["metric"] for c in comparisons[:7]] == [
        "orders", "revenue", "page_views", "visits",
        "bounce_rate", "error_rate", "revenue_per_visit",
    ]  # fmt: skip

    # Each figure equals the direct computation on the assigned visitors.
    per_visitor, _ = assign_visitors(rows_in)
    c = per_visitor[per_visitor["variant"] == "control"]
    b = per_visitor[per_visitor["variant"] == "B"]
    assert c["page_views"].sum() == rows[rows["variant"] == "control"]["page_views"].sum() - (
        rows.iloc[1]["page_views"] - 1
    )
    revenue = next(x for x in comparisons if x["metric"] == "revenue" and x["variant"] == "B")
    expected = sps.ttest_ind(b["revenue"], c["revenue"], equal_var=False)
    assert revenue["p_value"] == pytest.approx(expected.pvalue)
    assert revenue["difference"] == pytest.approx(b["revenue"].mean() - c["revenue"].mean())
    assert revenue["seq_ci_low"] < revenue["ci_low"] and revenue["ci_high"] < revenue["seq_ci_high"]

    rpv = next(x for x in comparisons if x["metric"] == "revenue_per_visit" and x["variant"] == "B")
    assert rpv["kind"] == "ratio"
    assert rpv["control_value"] == pytest.approx(c["revenue"].sum() / c["visits"].sum())
    assert rpv["variant_value"] == pytest.approx(b["revenue"].sum() / b["visits"].sum())
    assert rpv["lift"] == pytest.approx(rpv["difference"] / rpv["control_value"])
    assert (rpv["n_control"], rpv["n_variant"]) == (799, 820)


def test_scorecard_srm_flag_and_empty_input():
    card = scorecard(_traffic(5, {"control": 1000, "B": 1200}))
    assert card["srm"]["chi2"] == pytest.approx(2 * 100**2 / 1100)
    assert card["srm"]["flagged"] is True

    empty = scorecard(_traffic(5, {"control": 0}))
    assert empty["control"] is None and empty["comparisons"] == []
    assert empty["srm"]["p_value"] is None
    json.dumps(empty, allow_nan=False)


def test_cumulative_lift_path():
    rows = _traffic(9, {"control": 600, "B": 600}, hours=5)
    # A visitor of the control who shows up in B at the last hour.
    switcher = rows.iloc[[0]].assign(variant="B", first_hour=4)
    rows = pd.concat([rows.assign(first_hour=rows["first_hour"].clip(upper=3)), switcher])

    path = cumulative_lift_path(rows, "B", metric="orders")
    json.dumps(path, allow_nan=False)

    assert [p["time"] for p in path] == [0, 1, 2, 3, 4]
    assert [p["visitors_multi_variant"] for p in path] == [0, 0, 0, 0, 1]
    sizes = [p["n_control"] + p["n_variant"] for p in path]
    assert sizes[:4] == sorted(sizes[:4]) and sizes[3] == 1200 and sizes[4] == 1199

    # The point at each time is Welch on the visitors seen so far.
    upto_two = rows[rows["first_hour"] <= 2]
    c = upto_two[upto_two["variant"] == "control"]["orders"]
    b = upto_two[upto_two["variant"] == "B"]["orders"]
    assert path[2]["difference"] == pytest.approx(b.mean() - c.mean())
    assert path[2]["lift"] == pytest.approx((b.mean() - c.mean()) / c.mean())
    interval = sps.ttest_ind(b, c, equal_var=False).confidence_interval()
    assert path[2]["ci_low"] == pytest.approx(interval.low)
    for point in path:
        assert point["seq_ci_low"] < point["ci_low"] < point["ci_high"] < point["seq_ci_high"]

    timed = rows.assign(
        first_hour=pd.Timestamp("2024-05-01") + pd.to_timedelta(rows.first_hour, "h")
    )
    stamped = cumulative_lift_path(timed, "B", metric="orders")
    assert stamped[0]["time"] == "2024-05-01T00:00:00"
    assert stamped[-1]["difference"] == pytest.approx(path[-1]["difference"])

    with pytest.raises(ValueError, match="not one of the mean metrics"):
        cumulative_lift_path(rows, "B", metric="bounce_rate")
