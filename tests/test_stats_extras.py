"""Capping, multiple-comparison corrections and the Bayesian read-out of the scorecards,
checked against hand computations, scipy, Monte Carlo and the independent oracle."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from expo_platform.analysis.bayes import normal_readout
from expo_platform.analysis.capping import winsorize
from expo_platform.analysis.corrections import benjamini_hochberg, holm
from expo_platform.analysis.stats import MEAN_METRICS, RATIO_METRICS, assign_visitors, scorecard
from expo_platform.errors import SettingsError
from expo_platform.settings import load_settings
from tests import reference as ref
from tests.test_stats import _traffic


def _visitors(variant: str, **columns: list[float]) -> pd.DataFrame:
    """One row per visitor of a variant: the given columns, the other metrics 1."""
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame({"visitor_id": [f"{variant}-{i}" for i in range(n)], "variant": variant})
    for metric in ("page_views", "visits", "bounces", "orders", "units", "revenue", "errors"):
        frame[metric] = columns.get(metric, [1.0] * n)
    return frame


def _same(ours: list, expected: list) -> bool:
    """Equal lists of optional floats: None at the same places, the rest to 1e-12."""
    return len(ours) == len(expected) and all(
        (a is None and b is None)
        or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12))
        for a, b in zip(ours, expected, strict=True)
    )


def _by(card: dict, metric: str, variant: str = "B") -> dict:
    return next(c for c in card["comparisons"] if (c["metric"], c["variant"]) == (metric, variant))


# --- capping ---------------------------------------------------------------------------------

CONTROL = _visitors("control", revenue=[0, 0, 10, 100], orders=[0, 0, 1, 3], units=[0, 0, 2, 6])
VARIANT = _visitors("B", revenue=[0, 20, 30, 1000], orders=[0, 1, 1, 5], units=[0, 2, 3, 10])


def test_capping_matches_a_hand_computation():
    rows = pd.concat([CONTROL, VARIANT], ignore_index=True)
    card = scorecard(rows, cap_percentile=75)
    # Pooled revenue sorted: 0 0 0 10 20 30 100 1000. The 75th percentile sits at position
    # 7 * 0.75 = 5.25: 30 + 0.25 * (100 - 30) = 47.5; 100 and 1000 are above it.
    # Orders 0 0 0 0 1 1 3 5: 1 + 0.25 * 2 = 1.5. Units 0 0 0 0 2 3 6 10: 3 + 0.25 * 3 = 3.75.
    assert card["capping"] == {
        "percentile": 75.0,
        "caps": {"orders": 1.5, "units": 3.75, "revenue": 47.5},
        "visitors_capped": {"orders": 2, "units": 2, "revenue": 2},
    }
    revenue = _by(card, "revenue")
    assert (revenue["control_value"], revenue["variant_value"]) == (14.375, 24.375)
    direct = sps.ttest_ind([0, 20, 30, 47.5], [0, 0, 10, 47.5], equal_var=False)
    assert revenue["p_value"] == pytest.approx(direct.pvalue, rel=1e-12)
    orders = _by(card, "orders")
    assert (orders["control_value"], orders["variant_value"]) == (2.5 / 4, 3.5 / 4)
    # revenue_per_visit is built on the capped revenue (one visit per visitor here).
    assert _by(card, "revenue_per_visit")["variant_value"] == pytest.approx(97.5 / 4)
    json.dumps(card, allow_nan=False)


def test_capping_off_changes_nothing_and_is_reported_as_off():
    rows = _traffic(4, {"control": 300, "B": 310})
    plain = scorecard(rows)
    for off in (None, 0, 0.0):
        assert scorecard(rows, cap_percentile=off) == plain
    assert plain["capping"] == {"percentile": None, "caps": {}, "visitors_capped": {}}
    # The 100th percentile is the largest value: nothing is above it.
    top = scorecard(rows, cap_percentile=100)
    assert top["capping"]["visitors_capped"] == {"orders": 0, "units": 0, "revenue": 0}
    assert top["comparisons"] == plain["comparisons"]


def test_capping_pools_assigned_visitors_only():
    # A big spender seen in both variants is excluded before the cap is taken.
    switcher = _visitors("control", revenue=[1e6]).assign(visitor_id="both")
    rows = pd.concat([CONTROL, VARIANT, switcher, switcher.assign(variant="B")], ignore_index=True)
    card = scorecard(rows, cap_percentile=75)
    assert card["visitors_multi_variant"] == 1
    assert card["capping"]["caps"]["revenue"] == 47.5


def test_capping_narrows_the_revenue_interval_on_heavy_tails():
    rng = np.random.default_rng(11)
    rows = _traffic(11, {"control": 2000, "B": 2000})
    whales = rng.random(len(rows)) < 0.005
    rows.loc[whales, "revenue"] *= 200  # a few visitors spend 200 times more
    plain = _by(scorecard(rows), "revenue")
    capped = _by(scorecard(rows, cap_percentile=99), "revenue")
    assert capped["ci_high"] - capped["ci_low"] < (plain["ci_high"] - plain["ci_low"]) / 2


def test_winsorize_rejects_a_percentile_out_of_range():
    per_visitor, _ = assign_visitors(CONTROL)
    for bad in (-1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="cap percentile"):
            winsorize(per_visitor, bad)


def test_cap_percentile_setting():
    assert load_settings({}).batch.cap_percentile == 0.0
    assert load_settings({"EXPO_CAP_PERCENTILE": "99.5"}).batch.cap_percentile == 99.5
    with pytest.raises(SettingsError, match="EXPO_CAP_PERCENTILE"):
        load_settings({"EXPO_CAP_PERCENTILE": "101"})


def test_the_daily_scorecard_uses_the_setting():
    from expo_platform.analysis.daily import build_scorecard

    settings = load_settings({"EXPO_CAP_PERCENTILE": "75"})
    rows = pd.concat([CONTROL, VARIANT], ignore_index=True)
    card = build_scorecard(rows, settings, "exp", "assigned", [date(2026, 3, 2)])
    assert card["capping"]["caps"]["revenue"] == 47.5


# --- multiple comparisons --------------------------------------------------------------------


def test_holm_and_bh_by_hand_with_ties_and_undefined_p_values():
    p = [0.01, None, 0.04, 0.03, 0.03, 0.5]
    # m = 5 defined, sorted 0.01 0.03 0.03 0.04 0.5. Holm: 5 * 0.01 = 0.05, 4 * 0.03 = 0.12,
    # 3 * 0.03 = 0.09 -> 0.12 (monotone), 2 * 0.04 = 0.08 -> 0.12, 1 * 0.5 = 0.5.
    assert _same(holm(p), [0.05, None, 0.12, 0.12, 0.12, 0.5])
    # BH: 5 p(i) / i = 0.05, 0.075, 0.05, 0.05, 0.5, then the minimum from the top down.
    assert _same(benjamini_hochberg(p), [0.05, None, 0.05, 0.05, 0.05, 0.5])
    assert holm([0.2, 0.9]) == [0.4, 0.9]  # capped at 1 only when needed
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([]) == benjamini_hochberg([]) == []
    assert holm([None]) == benjamini_hochberg([None]) == [None]


def test_bh_matches_scipy_and_holm_the_step_down_rule():
    rng = np.random.default_rng(5)
    # Some real effects (tiny p-values) among nulls, and undefined p-values in between.
    raw = [float(x) for x in rng.permutation(np.r_[rng.uniform(0, 0.003, 10), rng.random(30)])]
    raw[::7] = [None] * len(raw[::7])
    defined = [x for x in raw if x is not None]
    expected = iter(sps.false_discovery_control(defined, method="bh"))
    assert _same(benjamini_hochberg(raw), [None if x is None else next(expected) for x in raw])
    # Holm's adjusted p <= alpha exactly for what the step-down procedure rejects at alpha:
    # the k smallest p-values, k the first rank where p(k+1) > alpha / (m - k).
    adjusted, ordered, m = holm(raw), sorted(defined), len(defined)
    for alpha in (0.005, 0.01, 0.05, 0.1):
        k = 0
        while k < m and ordered[k] <= alpha / (m - k):
            k += 1
        assert sum(a is not None and a <= alpha for a in adjusted) == k
        assert k >= 1  # the example is not trivial (1, 2, 6, 9 rejections)
    assert all(a is None or a >= x for x, a in zip(raw, adjusted, strict=True))


def test_scorecard_adjusts_over_every_variant_and_metric():
    rows = _traffic(3, {"control": 800, "B": 820, "C": 790})
    rows.loc[rows["variant"] == "C", "errors"] = 0
    rows.loc[rows["variant"] == "control", "errors"] = 0  # C's error_rate: no p-value
    card = scorecard(rows)
    comparisons = card["comparisons"]
    assert len(comparisons) == 2 * (len(MEAN_METRICS) + len(RATIO_METRICS))
    raw = [c["p_value"] for c in comparisons]
    assert _by(card, "error_rate", "C")["p_value"] is None
    assert _same([c["p_value_holm"] for c in comparisons], holm(raw))
    defined = [x for x in raw if x is not None]
    scipy_bh = iter(sps.false_discovery_control(defined))
    assert _same(
        [c["p_value_bh"] for c in comparisons], [None if x is None else next(scipy_bh) for x in raw]
    )
    assert _by(card, "error_rate", "C")["p_value_holm"] is None
    smallest = min(defined)
    assert min(c["p_value_holm"] for c in comparisons if c["p_value_holm"] is not None) == (
        pytest.approx(min(1.0, len(defined) * smallest))
    )


# --- Bayesian read-out -----------------------------------------------------------------------

DRAWS = 1_000_000
SIGMAS = 5  # Monte Carlo error allowed: 5 standard errors of the simulated mean


def _mc_close(samples: np.ndarray, value: float) -> None:
    """`value` is within SIGMAS Monte Carlo standard errors of the mean of `samples`."""
    se = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - value) <= SIGMAS * se + 1e-12, (samples.mean(), value, se)


@pytest.mark.parametrize(
    ("difference", "se", "lower"), [(0.3, 1.0, False), (-0.02, 0.01, False), (0.5, 0.2, True)]
)
def test_normal_readout_against_monte_carlo(difference, se, lower):
    rng = np.random.default_rng(2024)
    draws = rng.normal(difference, se, DRAWS)
    gain = -draws if lower else draws
    result = normal_readout(difference, se, lower_is_better=lower)
    _mc_close((gain > 0).astype(float), result.chance_to_beat_control)
    _mc_close(np.maximum(-gain, 0), result.expected_loss)
    _mc_close(np.maximum(gain, 0), result.expected_loss_control)
    observed_gain = -difference if lower else difference
    assert result.expected_loss_control - result.expected_loss == pytest.approx(observed_gain)


def test_normal_readout_is_undefined_without_a_standard_error():
    for difference, se in ((None, 1.0), (0.1, None), (0.1, 0.0)):
        result = normal_readout(difference, se)
        assert result.chance_to_beat_control is None and result.expected_loss is None
    far = normal_readout(-50.0, 1.0)  # far in the tail: no negative loss from rounding
    assert far.chance_to_beat_control == 0.0 and far.expected_loss_control == 0.0
    assert far.expected_loss == pytest.approx(50.0)


def test_scorecard_readout_against_monte_carlo_of_each_arm():
    """Each arm's mean (or ratio) is drawn from its own normal posterior; the scorecard's
    normal approximation of the difference must agree within the Monte Carlo error (mean
    metrics: the difference of two normals is exactly normal) or, for a ratio, within a
    further 0.002 (2% for the expected loss): with 4,000 visitors per arm the denominator's
    mean varies by under 1%, so the delta method's linearisation errs by far less than that
    (about 0.0002 and 0.1% here)."""
    rows = _traffic(8, {"control": 4000, "B": 4000})
    card = scorecard(rows)
    per_visitor, _ = assign_visitors(rows)
    arms = {name: per_visitor[per_visitor["variant"] == name] for name in ("control", "B")}
    rng = np.random.default_rng(7)

    def mean_draws(arm: pd.DataFrame, metric: str) -> np.ndarray:
        x = arm[metric].to_numpy(float)
        return rng.normal(x.mean(), x.std(ddof=1) / math.sqrt(len(x)), DRAWS)

    revenue = _by(card, "revenue")
    gain = mean_draws(arms["B"], "revenue") - mean_draws(arms["control"], "revenue")
    _mc_close((gain > 0).astype(float), revenue["chance_to_beat_control"])
    _mc_close(np.maximum(-gain, 0), revenue["expected_loss"])
    _mc_close(np.maximum(gain, 0), revenue["expected_loss_control"])

    def ratio_draws(arm: pd.DataFrame, num: str, den: str) -> np.ndarray:
        pair = arm[[num, den]].to_numpy(float)
        cov = np.cov(pair, rowvar=False, ddof=1) / len(pair)
        drawn = rng.multivariate_normal(pair.mean(axis=0), cov, DRAWS)
        return drawn[:, 0] / drawn[:, 1]

    bounce = _by(card, "bounce_rate")  # lower is better: the gain is control - variant
    gain = ratio_draws(arms["control"], "bounces", "visits") - ratio_draws(
        arms["B"], "bounces", "visits"
    )
    chance = (gain > 0).astype(float)
    assert abs(
        chance.mean() - bounce["chance_to_beat_control"]
    ) < 0.002 + SIGMAS * chance.std() / math.sqrt(DRAWS)
    loss = np.maximum(-gain, 0)
    assert loss.mean() == pytest.approx(bounce["expected_loss"], rel=0.02)


# --- the oracle and the table ----------------------------------------------------------------


def test_the_oracle_agrees_with_capping_corrections_and_readout():
    from tests.test_reference import iso, random_traffic

    counted = random_traffic(seed=9, visitors=300)
    sums = ref.visitor_sums(counted, "exp", "assigned", iso(1), iso(4))
    rows = pd.DataFrame(
        [{"variant": v, "visitor_id": who, **values} for (v, who), values in sums.items()]
    )
    for q in (None, 90, 97.5):
        ours = ref.scorecard(counted, "exp", "assigned", iso(1), iso(4), cap_percentile=q)
        project = scorecard(rows, cap_percentile=q)
        assert ref.compare_scorecards(ours, project) == [], q
        assert "p_value_holm" in ours["comparisons"][0]
        assert "chance_to_beat_control" in ours["comparisons"][0]
    assert ours["capping"]["visitors_capped"]["revenue"] > 0


def test_the_table_shows_corrections_readout_and_caps():
    from expo_platform.analysis.reports import scorecard_extras_text

    card = scorecard(_traffic(3, {"control": 500, "B": 500}), cap_percentile=99)
    text = scorecard_extras_text(card)
    assert "capping at percentile 99" in text and "revenue <= " in text
    header = next(line for line in text.splitlines() if line.startswith("variant"))
    assert header.split() == ["variant", "metric", "p", "p", "holm", "p", "BH", "P(beat)",
                              "risk", "risk", "ctrl"]  # fmt: skip
    bounce = next(line for line in text.splitlines() if line.startswith("B  ") and "bounce" in line)
    assert f"{_by(card, 'bounce_rate')['chance_to_beat_control']:.1%}" in bounce
    assert "capping: off" in scorecard_extras_text(scorecard(_traffic(3, {"control": 9})))
