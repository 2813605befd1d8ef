"""Experiment statistics (METRICS.md section 7): per-visitor comparisons against the control.

The analysis unit is the visitor. A visitor belongs to variant v when all of its rows in the
range carry v; visitors seen in more than one variant are excluded and counted as
`visitors_multi_variant`. Every other figure is computed from per-visitor sums of
page_views, visits, bounces, orders, units, revenue and errors.

- Mean metrics (orders, revenue, page_views, visits per visitor): Welch's t-test
  (Welch-Satterthwaite degrees of freedom) via scipy.stats.ttest_ind(equal_var=False).
- Ratio metrics (bounce_rate, error_rate, revenue_per_visit): delta method over per-visitor
  sums, Var(R) ~ (s_y^2 - 2 R s_xy + R^2 s_x^2) / (n mean_x^2), normal approximation; the
  difference of two independent ratios has variance Var_T + Var_C.
- Sample-ratio mismatch: chi-square goodness of fit of visitors per variant against the
  expected split, flagged when p < 0.001.
- Always-valid intervals: asymptotic confidence sequences (see `confidence_sequence`).
- Capping (optional): orders, units and revenue winsorized at a percentile of the pooled
  per-visitor sums before any comparison (`expo_platform.analysis.capping`).
- Multiple comparisons: Holm-Bonferroni and Benjamini-Hochberg adjusted p-values over every
  comparison of the scorecard (`expo_platform.analysis.corrections`).
- Bayesian read-out: chance to beat control and expected losses from the normal posterior of
  the difference (`expo_platform.analysis.bayes`).
- CUPED (when `rows` carry `pre_<metric>` columns): the difference adjusted by each visitor's
  pre-exposure value of the metric, with its interval, p-value and variance reduction
  (`expo_platform.analysis.cuped`).

`scorecard(rows)` returns a JSON-serialisable dict (no NaN, undefined figures are None):

    {
      "control": "control",                 # None when there are no visitors at all
      "alpha": 0.05,
      "planned_n": 5000,                    # tuning of the always-valid intervals
      "capping": {"percentile": 99.0,       # None (and empty dicts) when capping is off
                  "caps": {"orders": 2.0, "units": 5.0, "revenue": 180.0},
                  "visitors_capped": {"orders": 12, "units": 15, "revenue": 20}},
      "cuped": {"days": 7,                  # None (and an empty dict) when CUPED is off
                "visitors_with_pre_period": {"control": 640, "B": 655}},
      "visitors_multi_variant": 3,
      "variants": {"control": {"visitors": 1000}, "B": {"visitors": 1012}},
      "srm": {"counts": {...}, "expected": {...}, "chi2": 0.16, "p_value": 0.69,
              "flagged": false},
      "comparisons": [Comparison.as_dict(), ...]  # per non-control variant: the mean
                                                   # metrics, then the ratio metrics
    }

Each comparison is {"metric", "kind" ("mean"|"ratio"), "control", "variant",
"control_value", "variant_value", "difference" (variant - control), "lift"
(difference / control_value), "ci_low", "ci_high" (fixed-horizon interval of the
difference), "p_value", "n_control", "n_variant", "seq_ci_low", "seq_ci_high"
(always-valid interval of the difference), "p_value_holm", "p_value_bh" (p_value adjusted
over all comparisons of the scorecard), "chance_to_beat_control", "expected_loss" (of
shipping the variant), "expected_loss_control" (of keeping the control), "cuped_theta",
"cuped_control_value", "cuped_variant_value", "cuped_difference", "cuped_ci_low",
"cuped_ci_high", "cuped_p_value", "cuped_variance_reduction" (None when CUPED is off)}.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from expo_platform.analysis.bayes import readout_for
from expo_platform.analysis.capping import winsorize
from expo_platform.analysis.corrections import benjamini_hochberg, holm
from expo_platform.analysis.cuped import cuped_mean, cuped_ratio

METRIC_COLUMNS = ("page_views", "visits", "bounces", "orders", "units", "revenue", "errors")
MEAN_METRICS = ("orders", "revenue", "page_views", "visits")
# name -> (numerator column, denominator column)
RATIO_METRICS = {
    "bounce_rate": ("bounces", "visits"),
    "error_rate": ("errors", "page_views"),
    "revenue_per_visit": ("revenue", "visits"),
}
PRE = "pre_"  # prefix of a metric's pre-exposure column: the CUPED covariate
CONTROL = "control"
SRM_THRESHOLD = 0.001
# GrowthBook's default tuning: the confidence sequence is tightest near 5000 units in total.
DEFAULT_PLANNED_N = 5000


@dataclass(frozen=True)
class Comparison:
    """One metric of one variant against the control."""

    metric: str
    kind: str
    control: str
    variant: str
    control_value: float | None
    variant_value: float | None
    difference: float | None
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_control: int
    n_variant: int
    seq_ci_low: float | None = None
    seq_ci_high: float | None = None
    p_value_holm: float | None = None
    p_value_bh: float | None = None
    chance_to_beat_control: float | None = None
    expected_loss: float | None = None
    expected_loss_control: float | None = None
    cuped_theta: float | None = None
    cuped_control_value: float | None = None
    cuped_variant_value: float | None = None
    cuped_difference: float | None = None
    cuped_ci_low: float | None = None
    cuped_ci_high: float | None = None
    cuped_p_value: float | None = None
    cuped_variance_reduction: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The comparison as a JSON-serialisable dict."""
        return {key: _plain(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch test of visitors per variant."""

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float | None
    p_value: float | None
    flagged: bool

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-serialisable dict."""
        return {
            "counts": {k: int(v) for k, v in self.counts.items()},
            "expected": {k: float(v) for k, v in self.expected.items()},
            "chi2": _plain(self.chi2),
            "p_value": _plain(self.p_value),
            "flagged": bool(self.flagged),
        }


def _finite(value: float | None) -> float | None:
    """The value as a float, or None when missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """Numpy scalars to Python ones, so that json.dumps accepts them."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return _finite(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _lift(difference: float | None, control_value: float | None) -> float | None:
    """Relative lift, None when the control value is zero or unknown."""
    if difference is None or not control_value:
        return None
    return difference / control_value


def choose_control(variants: Iterable[str]) -> str:
    """`control` when present, else the alphabetically first variant."""
    names = sorted(set(variants))
    if not names:
        raise ValueError("no variants to choose a control from")
    return CONTROL if CONTROL in names else names[0]


def sequential_rho(planned_n: float = DEFAULT_PLANNED_N, alpha: float = 0.05) -> float:
    """Mixture parameter rho that makes the confidence sequence tightest at `planned_n`.

    rho = sqrt((-2 ln(alpha) + ln(1 - 2 ln(alpha))) / planned_n), the closed-form
    approximation of Howard et al. (2021) used by Waudby-Smith et al. (2021) and GrowthBook.
    """
    if planned_n <= 0 or not 0 < alpha < 1:
        raise ValueError("planned_n must be positive and alpha in (0, 1)")
    log_term = -2 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1)) / planned_n)


def confidence_sequence(
    se: float, n: int, alpha: float = 0.05, planned_n: float = DEFAULT_PLANNED_N
) -> float | None:
    """Half-width of the always-valid (1 - alpha) interval of an estimate with std error `se`.

    Asymptotic confidence sequence with the normal-mixture boundary of Waudby-Smith, Arbour,
    Sinha, Kennedy and Ramdas (2021), "Time-uniform central limit theory and asymptotic
    confidence sequences", arXiv:2103.06476 (Theorem 2.2):

        half = sigma * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / alpha))

    with n the number of units behind the estimate (control + variant) and
    sigma = se * sqrt(n), the per-unit standard deviation that gives the estimate its
    standard error (se^2 = sigma^2 / n). rho comes from `sequential_rho(planned_n, alpha)`;
    the default planned_n of 5000 units is GrowthBook's default tuning parameter. The
    boundary is at least ~3.03 se for alpha = 0.05, wider than z = 1.96, and shrinks as n
    grows for a fixed sigma.
    """
    se_value = _finite(se)
    if se_value is None or se_value <= 0 or n < 1:
        return None
    rho2 = sequential_rho(planned_n, alpha) ** 2
    sigma = se_value * math.sqrt(n)
    spread = 2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    return sigma * math.sqrt(spread)


def _seq_bounds(
    difference: float | None,
    se: float | None,
    n: int,
    fixed_half: float | None,
    alpha: float,
    planned_n: float,
) -> tuple[float | None, float | None]:
    """Always-valid bounds of a difference, never narrower than the fixed-horizon interval."""
    half = confidence_sequence(se, n, alpha, planned_n) if se is not None else None
    if difference is None or half is None:
        return None, None
    # With a handful of units the Welch t quantile can exceed the asymptotic boundary,
    # and an "always-valid" interval narrower than the fixed one would be absurd.
    if fixed_half is not None:
        half = max(half, fixed_half)
    return difference - half, difference + half


def _comparison(
    metric: str,
    kind: str,
    names: tuple[str, str],
    values: tuple[float | None, float | None],
    sizes: tuple[int, int],
    difference: float | None,
    interval: tuple[float | None, float | None],
    p_value: float | None,
    se: float | None,
    alpha: float,
    planned_n: float,
) -> Comparison:
    """A Comparison from the figures of either test, with its always-valid interval and
    Bayesian read-out (the adjusted p-values need the whole scorecard: `adjust_p_values`)."""
    ci_low, ci_high = interval
    fixed_half = (ci_high - ci_low) / 2 if ci_low is not None and ci_high is not None else None
    seq_low, seq_high = _seq_bounds(difference, se, sum(sizes), fixed_half, alpha, planned_n)
    bayes = readout_for(metric, difference, se)
    return Comparison(
        metric=metric,
        kind=kind,
        control=names[0],
        variant=names[1],
        control_value=values[0],
        variant_value=values[1],
        difference=difference,
        lift=_lift(difference, values[0]),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        n_control=sizes[0],
        n_variant=sizes[1],
        seq_ci_low=seq_low,
        seq_ci_high=seq_high,
        chance_to_beat_control=bayes.chance_to_beat_control,
        expected_loss=bayes.expected_loss,
        expected_loss_control=bayes.expected_loss_control,
    )


def welch(
    metric: str,
    control_name: str,
    variant_name: str,
    control: np.ndarray,
    variant: np.ndarray,
    alpha: float = 0.05,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """Welch's t-test of the mean of `variant` minus the mean of `control`."""
    c = np.asarray(control, dtype=float)
    v = np.asarray(variant, dtype=float)
    n_c, n_v = len(c), len(v)
    c_mean = _finite(c.mean()) if n_c else None
    v_mean = _finite(v.mean()) if n_v else None
    difference = v_mean - c_mean if c_mean is not None and v_mean is not None else None
    ci_low = ci_high = p_value = se = None
    if n_c >= 2 and n_v >= 2:
        se = _finite(math.sqrt(c.var(ddof=1) / n_c + v.var(ddof=1) / n_v))
        if se:
            result = stats.ttest_ind(v, c, equal_var=False)
            interval = result.confidence_interval(confidence_level=1 - alpha)
            ci_low, ci_high = _finite(interval.low), _finite(interval.high)
            p_value = _finite(result.pvalue)
        else:
            se = None  # both groups constant: no spread, no test
    return _comparison(
        metric,
        "mean",
        (control_name, variant_name),
        (c_mean, v_mean),
        (n_c, n_v),
        difference,
        (ci_low, ci_high),
        p_value,
        se,
        alpha,
        planned_n,
    )


def ratio_variance(num: np.ndarray, den: np.ndarray) -> tuple[float | None, float | None]:
    """Ratio sum(num) / sum(den) and its delta-method variance; None where undefined."""
    y = np.asarray(num, dtype=float)
    x = np.asarray(den, dtype=float)
    n = len(x)
    if n == 0 or x.sum() == 0:
        return None, None
    ratio = float(y.sum() / x.sum())
    if n < 2:
        return ratio, None
    cov = np.cov(y, x, ddof=1)
    var_y, cov_xy, var_x = cov[0, 0], cov[0, 1], cov[1, 1]
    variance = (var_y - 2 * ratio * cov_xy + ratio**2 * var_x) / (n * x.mean() ** 2)
    # Rounding can leave a tiny negative number when the ratio is the same for every visitor.
    return ratio, _finite(max(float(variance), 0.0))


def delta_ratio(
    metric: str,
    control_name: str,
    variant_name: str,
    num_c: np.ndarray,
    den_c: np.ndarray,
    num_v: np.ndarray,
    den_v: np.ndarray,
    alpha: float = 0.05,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """Difference of two ratio metrics with delta-method variance and a normal interval."""
    c_ratio, c_var = ratio_variance(num_c, den_c)
    v_ratio, v_var = ratio_variance(num_v, den_v)
    n_c, n_v = len(np.asarray(den_c)), len(np.asarray(den_v))
    difference = v_ratio - c_ratio if c_ratio is not None and v_ratio is not None else None
    ci_low = ci_high = p_value = se = None
    if difference is not None and c_var is not None and v_var is not None:
        se = math.sqrt(c_var + v_var) or None
    if se is not None:
        z = stats.norm.ppf(1 - alpha / 2)
        ci_low, ci_high = difference - z * se, difference + z * se
        p_value = float(2 * stats.norm.sf(abs(difference) / se))
    return _comparison(
        metric,
        "ratio",
        (control_name, variant_name),
        (c_ratio, v_ratio),
        (n_c, n_v),
        difference,
        (ci_low, ci_high),
        p_value,
        se,
        alpha,
        planned_n,
    )


def srm(counts: Mapping[str, int], weights: Mapping[str, float] | None = None) -> SrmResult:
    """Chi-square goodness of fit of visitors per variant against the expected split.

    Without weights the split is equal. With weights (variant -> weight, any positive scale)
    every observed variant must have one; a weighted variant without visitors counts as 0,
    since an arm that received nobody is the starkest mismatch.
    """
    observed = {name: int(count) for name, count in counts.items()}
    if weights is None:
        shares = {name: 1.0 for name in observed}
    else:
        missing = sorted(set(observed) - set(weights))
        if missing:
            raise ValueError(f"SRM weights do not cover the observed variants {missing}")
        if any(not float(w) > 0 for w in weights.values()):
            raise ValueError(f"SRM weights must be positive, got {dict(weights)}")
        shares = {name: float(w) for name, w in weights.items()}
        observed = {name: observed.get(name, 0) for name in shares}
    names = sorted(observed)
    total = sum(observed.values())
    weight_sum = sum(shares.values())
    expected = {name: total * shares[name] / weight_sum for name in names}
    if len(names) < 2 or total == 0:
        return SrmResult(observed, expected, None, None, False)
    result = stats.chisquare([observed[name] for name in names], [expected[name] for name in names])
    p_value = float(result.pvalue)
    return SrmResult(observed, expected, float(result.statistic), p_value, p_value < SRM_THRESHOLD)


def _require(rows: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise a clear error when input columns are missing."""
    missing = [name for name in columns if name not in rows.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")


def assign_visitors(rows: pd.DataFrame, time_col: str = "first_hour") -> tuple[pd.DataFrame, int]:
    """One row per single-variant visitor with summed metrics, and the multi-variant count.

    When `time_col` is present its minimum per visitor is kept (when the visitor was first
    seen), so that the result can feed `cumulative_lift_path`.
    """
    _require(rows, ("visitor_id", "variant", *METRIC_COLUMNS))
    variants_per_visitor = rows.groupby("visitor_id")["variant"].nunique()
    single = variants_per_visitor.index[variants_per_visitor == 1]
    multi = int((variants_per_visitor > 1).sum())
    kept = rows[rows["visitor_id"].isin(single)]
    aggregations: dict[str, str] = {name: "sum" for name in METRIC_COLUMNS}
    # A visitor's pre-period covariates are the same on every row of the visitor.
    aggregations.update({c: "max" for c in rows.columns if c.startswith(PRE)})
    if time_col in rows.columns:
        aggregations[time_col] = "min"
    per_visitor = (
        kept.groupby(["visitor_id", "variant"], as_index=False, sort=True)
        .agg(aggregations)
        .reset_index(drop=True)
    )
    return per_visitor, multi


def compare_variant(
    per_visitor: pd.DataFrame,
    control: str,
    variant: str,
    alpha: float = 0.05,
    planned_n: float = DEFAULT_PLANNED_N,
) -> list[Comparison]:
    """All mean and ratio comparisons of one variant against the control."""
    c = per_visitor[per_visitor["variant"] == control]
    v = per_visitor[per_visitor["variant"] == variant]
    comparisons = [
        welch(
            metric, control, variant, c[metric].to_numpy(), v[metric].to_numpy(), alpha, planned_n
        )
        for metric in MEAN_METRICS
    ]
    for metric, (num, den) in RATIO_METRICS.items():
        comparisons.append(
            delta_ratio(
                metric,
                control,
                variant,
                c[num].to_numpy(),
                c[den].to_numpy(),
                v[num].to_numpy(),
                v[den].to_numpy(),
                alpha,
                planned_n,
            )
        )
    if all(PRE + m in per_visitor.columns for m in METRIC_COLUMNS):
        comparisons = [_with_cuped(cmp, c, v, alpha) for cmp in comparisons]
    return comparisons


def _with_cuped(comparison: Comparison, c: pd.DataFrame, v: pd.DataFrame, alpha: float):
    """The comparison with its CUPED figures, from the arms' `pre_<metric>` covariates."""
    names = [n for n in c.columns if n in METRIC_COLUMNS or n.startswith(PRE)]
    col = {n: (c[n].to_numpy(float), v[n].to_numpy(float)) for n in names}
    if comparison.kind == "mean":
        m = comparison.metric
        result = cuped_mean(col[m][0], col[PRE + m][0], col[m][1], col[PRE + m][1], alpha)
    else:
        num, den = RATIO_METRICS[comparison.metric]
        arms = [
            ((col[num][i], col[den][i]), (col[PRE + num][i], col[PRE + den][i])) for i in (0, 1)
        ]
        result = cuped_ratio(*arms[0], *arms[1], alpha)
    return replace(comparison, **result.prefixed())


def adjust_p_values(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with their Holm and Benjamini-Hochberg p-values over the whole list."""
    raw = [c.p_value for c in comparisons]
    return [
        replace(c, p_value_holm=h, p_value_bh=b)
        for c, h, b in zip(comparisons, holm(raw), benjamini_hochberg(raw), strict=True)
    ]


def scorecard(
    rows: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    planned_n: float = DEFAULT_PLANNED_N,
    cap_percentile: float | None = None,
    cuped_days: int | None = None,
) -> dict[str, Any]:
    """The experiment's scorecard (shape in the module docstring) from rows of the range.

    `rows` may hold several rows per visitor (e.g. one per hour); assignment happens here,
    so rows that are already one per visitor give visitors_multi_variant = 0. With
    `cap_percentile` (0 < q <= 100; None or 0: off) orders, units and revenue are capped at
    that percentile of the assigned visitors' pooled sums before the comparisons. With
    `cuped_days` (the pre-period's length, reported) and `pre_<metric>` columns, CUPED.
    """
    if not cuped_days:
        rows = rows[[c for c in rows.columns if not c.startswith(PRE)]]
    per_visitor, multi = assign_visitors(rows)
    per_visitor, capping = winsorize(per_visitor, cap_percentile)
    visitors = per_visitor.groupby("variant")["visitor_id"].count().to_dict()
    counts = {str(name): int(n) for name, n in sorted(visitors.items())}
    control = choose_control(counts) if counts else None
    comparisons: list[Comparison] = []
    if control is not None:
        for variant in sorted(counts):
            if variant != control:
                comparisons += compare_variant(per_visitor, control, variant, alpha, planned_n)
    return {
        "control": control,
        "alpha": alpha,
        "planned_n": planned_n,
        "capping": capping.as_dict(),
        "cuped": _cuped_block(per_visitor, cuped_days),
        "visitors_multi_variant": multi,
        "variants": {name: {"visitors": n} for name, n in counts.items()},
        "srm": srm(counts, weights).as_dict(),
        "comparisons": [c.as_dict() for c in adjust_p_values(comparisons)],
    }


def _cuped_block(per_visitor: pd.DataFrame, days: int | None) -> dict[str, Any]:
    """The pre-period's length and, per variant, the visitors with traffic in it."""
    pre = [PRE + m for m in METRIC_COLUMNS]
    if not days or not all(c in per_visitor.columns for c in pre):
        return {"days": None, "visitors_with_pre_period": {}}
    active = per_visitor[pre].to_numpy(float).sum(axis=1) > 0
    counts = per_visitor[active].groupby("variant")["visitor_id"].count()
    names = sorted(per_visitor["variant"].unique())
    return {
        "days": int(days),
        "visitors_with_pre_period": {n: int(counts.get(n, 0)) for n in names},
    }


def cumulative_lift_path(
    rows: pd.DataFrame,
    variant: str,
    metric: str = "orders",
    time_col: str = "first_hour",
    control: str | None = None,
    alpha: float = 0.05,
    planned_n: float = DEFAULT_PLANNED_N,
) -> list[dict[str, Any]]:
    """Cumulative comparison of one mean metric at every distinct time, for a trend chart.

    At time t the range is every row with time <= t: visitors are assigned (multi-variant
    ones excluded) and summed over that range only, so each point is the scorecard an analyst
    would have seen then. Each point is {"time", "control_value", "variant_value",
    "difference", "lift", "ci_low", "ci_high", "p_value", "n_control", "n_variant",
    "seq_ci_low", "seq_ci_high", "chance_to_beat_control", "expected_loss",
    "expected_loss_control", "visitors_multi_variant"}; the intervals bound the absolute
    difference (variant - control), not the relative lift (divide by control_value for an
    approximate relative band). Only the seq bounds may be read at every point without
    inflating false positives; the fixed ones and p_value are for comparison.
    """
    _require(rows, (time_col, "variant"))
    if metric not in MEAN_METRICS:
        raise ValueError(f"{metric!r} is not one of the mean metrics {MEAN_METRICS}")
    control = control or choose_control(rows["variant"].dropna().unique())
    path = []
    for time in sorted(rows[time_col].dropna().unique()):
        per_visitor, multi = assign_visitors(rows[rows[time_col] <= time], time_col)
        c = per_visitor.loc[per_visitor["variant"] == control, metric].to_numpy()
        v = per_visitor.loc[per_visitor["variant"] == variant, metric].to_numpy()
        point = welch(metric, control, variant, c, v, alpha, planned_n).as_dict()
        for key in ("metric", "kind", "control", "variant", "p_value_holm", "p_value_bh"):
            point.pop(key)
        path.append(
            {
                "time": _plain(pd.Timestamp(time) if _is_time(time) else time),
                **point,
                "visitors_multi_variant": multi,
            }
        )
    return path


def _is_time(value: Any) -> bool:
    """Whether a value is a datetime that should be reported as ISO text."""
    return isinstance(value, np.datetime64 | pd.Timestamp)
