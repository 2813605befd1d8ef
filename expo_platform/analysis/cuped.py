"""CUPED: variance reduction with each visitor's pre-exposure value of the same metric.

Deng, Xu, Kohavi and Walker (2013), "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data" (WSDM). Pure numpy/scipy on per-visitor
arrays; the covariate comes from `visitor_totals` over the `EXPO_CUPED_DAYS` days before the
visitor's first exposure (`expo_platform.analysis.pre_period`), 0 for a visitor without
traffic then.

Mean metrics, per-visitor value y and covariate x, both arms pooled (control and variant):

    theta = Cov(x, y) / Var(x)                    (pooled over both arms, ddof 1)
    y_adj = y - theta (x - mean(x))               (mean(x) pooled)
    difference = mean_v(y_adj) - mean_c(y_adj) = (ybar_v - ybar_c) - theta (xbar_v - xbar_c)

and Welch's t-test of y_adj, variant against control (theta taken as known, as in the
paper). Ratio metrics R = sum(num) / sum(den) use the delta method's linearisation, a
per-visitor variable whose mean is the arm's ratio and whose variance over n is the delta
method's variance (`stats.ratio_variance`):

    L_i = R_a + (num_i - R_a den_i) / mean_a(den)          (arm a's ratio and mean)
    M_i = R0 + (pre_num_i - R0 pre_den_i) / mean(pre_den)   (R0, mean(pre_den): both arms pooled)

then theta, the adjusted difference and its variance as for a mean metric with y = L and
x = M, and a normal interval (as `stats.delta_ratio`). The pre-period constants are pooled
over the arms, so the covariate is the same function of each visitor's pre-period in either
arm. Where the covariate does not vary (nobody had a pre-period), theta is 0 and the
adjusted figures equal the unadjusted ones.

The variance reduction is 1 - Var_adj / Var: the squared standard error of the adjusted
difference over that of the unadjusted one (Welch's, or the delta method's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

FIELDS = (
    "theta",
    "control_value",
    "variant_value",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "variance_reduction",
)


@dataclass(frozen=True)
class Cuped:
    """The CUPED-adjusted comparison of one metric; None where undefined."""

    theta: float | None = None
    control_value: float | None = None
    variant_value: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    variance_reduction: float | None = None

    def prefixed(self) -> dict[str, float | None]:
        """The figures as the comparison's `cuped_*` fields."""
        return {f"cuped_{k}": _finite(v) for k, v in asdict(self).items()}


NONE = Cuped()


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def theta(post: np.ndarray, pre: np.ndarray) -> float:
    """Cov(pre, post) / Var(pre) over the pooled visitors; 0 when pre does not vary."""
    var = float(np.var(pre, ddof=1)) if len(pre) >= 2 else 0.0
    if not var > 0:
        return 0.0
    return float(np.cov(pre, post, ddof=1)[0, 1] / var)


def adjust(
    post_c: np.ndarray,
    pre_c: np.ndarray,
    post_v: np.ndarray,
    pre_v: np.ndarray,
    alpha: float = 0.05,
    welch: bool = True,
) -> Cuped:
    """CUPED on per-visitor values `post` with covariates `pre`, variant against control:
    Welch's t-test of the adjusted values, or (welch=False) a normal interval."""
    yc, xc = np.asarray(post_c, dtype=float), np.asarray(pre_c, dtype=float)
    yv, xv = np.asarray(post_v, dtype=float), np.asarray(pre_v, dtype=float)
    n_c, n_v = len(yc), len(yv)
    if n_c < 2 or n_v < 2:
        return NONE
    t = theta(np.concatenate([yc, yv]), np.concatenate([xc, xv]))
    x_mean = float(np.concatenate([xc, xv]).mean())
    adj_c, adj_v = yc - t * (xc - x_mean), yv - t * (xv - x_mean)
    c_value, v_value = float(adj_c.mean()), float(adj_v.mean())
    var = yc.var(ddof=1) / n_c + yv.var(ddof=1) / n_v
    var_adj = adj_c.var(ddof=1) / n_c + adj_v.var(ddof=1) / n_v
    reduction = 1 - var_adj / var if var > 0 else None
    ci_low = ci_high = p_value = None
    if var_adj > 0:
        if welch:
            test = stats.ttest_ind(adj_v, adj_c, equal_var=False)
            interval = test.confidence_interval(confidence_level=1 - alpha)
            ci_low, ci_high, p_value = interval.low, interval.high, test.pvalue
        else:
            se = math.sqrt(var_adj)
            z = stats.norm.ppf(1 - alpha / 2)
            diff = v_value - c_value
            ci_low, ci_high = diff - z * se, diff + z * se
            p_value = 2 * stats.norm.sf(abs(diff) / se)
    return Cuped(
        theta=t,
        control_value=c_value,
        variant_value=v_value,
        difference=v_value - c_value,
        ci_low=_finite(ci_low),
        ci_high=_finite(ci_high),
        p_value=_finite(p_value),
        variance_reduction=_finite(reduction),
    )


def cuped_mean(
    y_c: np.ndarray, x_c: np.ndarray, y_v: np.ndarray, x_v: np.ndarray, alpha: float = 0.05
) -> Cuped:
    """CUPED of a mean metric: per-visitor values y, pre-period values x."""
    return adjust(y_c, x_c, y_v, x_v, alpha, welch=True)


def linearised_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray | None:
    """R + (num - R den) / mean(den), R = sum(num) / sum(den): the delta method's per-visitor
    variable (its mean is R, its variance over n the delta variance); None when sum(den) = 0."""
    y, x = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if len(x) == 0 or x.sum() == 0:
        return None
    ratio = y.sum() / x.sum()
    return ratio + (y - ratio * x) / x.mean()


def cuped_ratio(
    post_c: tuple[np.ndarray, np.ndarray],
    pre_c: tuple[np.ndarray, np.ndarray],
    post_v: tuple[np.ndarray, np.ndarray],
    pre_v: tuple[np.ndarray, np.ndarray],
    alpha: float = 0.05,
) -> Cuped:
    """CUPED of a ratio metric; each argument is (numerators, denominators) per visitor."""
    lc, lv = linearised_ratio(*post_c), linearised_ratio(*post_v)
    if lc is None or lv is None:
        return NONE
    n_c = len(lc)
    pre = linearised_ratio(
        np.concatenate([pre_c[0], pre_v[0]]), np.concatenate([pre_c[1], pre_v[1]])
    )
    if pre is None:  # nobody had a pre-period denominator: a constant covariate
        pre = np.zeros(n_c + len(lv))
    return adjust(lc, pre[:n_c], lv, pre[n_c:], alpha, welch=False)
