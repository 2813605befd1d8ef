"""The oracle's CUPED, in plain Python beside `tests/reference.py` (which it extends).

From the counted beacons: each visitor's totals per UTC day whatever the experiments (the
`visitor_totals` rule), its first exposure day to an experiment (the first day it has a
beacon listing it), its covariate (the totals of the N days before that day), then theta,
the adjusted means, interval, p-value and variance reduction of every comparison, with loops
and sums rather than numpy (scipy only for the t and normal quantiles). The formulas are
those docs/metrics.md states; nothing of `expo_platform` is used.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from scipy import stats

from tests import reference as ref

DAY_MS = 24 * ref.HOUR_MS


def day_of(ts: int) -> int:
    return ts // DAY_MS


def visitor_day_totals(beacons: Iterable[dict]) -> dict[tuple[str, int], Counter]:
    """(visitor, day index) -> the visitor metrics over all its counted beacons that day."""
    totals: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for visit in ref.visits(beacons):
        first = visit.beacons[0]
        start = totals[(first["visitor_id"], day_of(first["ts"]))]
        start["visits"] += 1
        start["bounces"] += int(len(visit.beacons) == 1 and first["type"] == "page_view")
        for beacon in visit.beacons:
            entry = totals[(beacon["visitor_id"], day_of(beacon["ts"]))]
            entry["page_views"] += int(beacon["type"] == "page_view")
            entry["errors"] += int(beacon["type"] == "error")
            if beacon["event_id"] in visit.counted_orders:
                entry["orders"] += 1
                entry["units"] += beacon["order"]["units"]
                entry["revenue"] += float(beacon["order"]["revenue"])
    return totals


def first_exposure(beacons: Iterable[dict], experiment: str) -> dict[str, int]:
    """visitor -> the first day it has a beacon listing the experiment."""
    first: dict[str, int] = {}
    for beacon in beacons:
        if any(key[0] == experiment for key in ref.populations(beacon)):
            visitor, day = beacon["visitor_id"], day_of(beacon["ts"])
            first[visitor] = min(day, first.get(visitor, day))
    return first


def covariates(beacons: list[dict], experiment: str, days: int) -> dict[str, dict[str, float]]:
    """visitor -> its totals over the `days` days before its first exposure (0 if none)."""
    totals = visitor_day_totals(beacons)
    result = {}
    for visitor, first in first_exposure(beacons, experiment).items():
        window = [totals.get((visitor, first - k), Counter()) for k in range(1, days + 1)]
        result[visitor] = {m: float(sum(t[m] for t in window)) for m in ref.VISITOR_METRICS}
    return result


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _cov(xs: list[float], ys: list[float]) -> float:
    mx, my = _mean(xs), _mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (len(xs) - 1)


def adjust(yc: list, xc: list, yv: list, xv: list, welch: bool) -> dict[str, Any]:
    """theta pooled over both arms, adjusted values, then Welch or a normal interval."""
    ys, xs = yc + yv, xc + xv
    var_x = _cov(xs, xs)
    theta = _cov(xs, ys) / var_x if var_x > 0 else 0.0
    x_bar = _mean(xs)
    ac = [y - theta * (x - x_bar) for y, x in zip(yc, xc, strict=True)]
    av = [y - theta * (x - x_bar) for y, x in zip(yv, xv, strict=True)]
    a, b = _cov(ac, ac) / len(ac), _cov(av, av) / len(av)
    var = _cov(yc, yc) / len(yc) + _cov(yv, yv) / len(yv)
    diff = _mean(av) - _mean(ac)
    se = math.sqrt(a + b)
    if welch:
        df = (a + b) ** 2 / (a * a / (len(ac) - 1) + b * b / (len(av) - 1))
        q, p = stats.t.ppf(0.975, df), 2 * stats.t.sf(abs(diff) / se, df)
    else:
        q, p = stats.norm.ppf(0.975), 2 * stats.norm.sf(abs(diff) / se)
    return {
        "cuped_theta": theta,
        "cuped_control_value": _mean(ac),
        "cuped_variant_value": _mean(av),
        "cuped_difference": diff,
        "cuped_ci_low": diff - q * se,
        "cuped_ci_high": diff + q * se,
        "cuped_p_value": p,
        "cuped_variance_reduction": 1 - (a + b) / var,
    }


def linearised(num: list[float], den: list[float]) -> list[float]:
    """R + (num - R den) / mean(den), R = sum(num) / sum(den)."""
    r, mean_den = sum(num) / sum(den), _mean(den)
    return [r + (y - r * x) / mean_den for y, x in zip(num, den, strict=True)]


def cuped_comparisons(
    beacons: list[dict], experiment: str, population: str, days: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """(metric, variant) -> the cuped_* fields of the scorecard over every day there is."""
    sums = ref.visitor_sums(beacons, experiment, population)
    pre = covariates(beacons, experiment, days)
    variants_of: dict[str, set[str]] = defaultdict(set)
    for variant, visitor in sums:
        variants_of[visitor].add(variant)
    arms: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for (variant, visitor), values in sorted(sums.items()):
        if len(variants_of[visitor]) == 1:
            arms[variant].append((values, pre[visitor]))
    control = ref.choose_control(arms)
    result = {}
    for name in sorted(arms):
        if name == control:
            continue
        c, v = arms[control], arms[name]
        for m in ref.MEAN_METRICS:
            post = ([s[m] for s, _ in c], [s[m] for s, _ in v])
            cov = ([p[m] for _, p in c], [p[m] for _, p in v])
            result[(m, name)] = adjust(post[0], cov[0], post[1], cov[1], welch=True)
        for m, (num, den) in ref.RATIO_METRICS.items():
            lc = linearised([s[num] for s, _ in c], [s[den] for s, _ in c])
            lv = linearised([s[num] for s, _ in v], [s[den] for s, _ in v])
            everyone = c + v
            pre_den = [p[den] for _, p in everyone]
            if sum(pre_den) > 0:
                m_all = linearised([p[num] for _, p in everyone], pre_den)
            else:
                m_all = [0.0] * len(everyone)
            result[(m, name)] = adjust(lc, m_all[: len(c)], lv, m_all[len(c) :], welch=False)
    return result


def visitors_with_pre_period(
    beacons: list[dict], experiment: str, population: str, days: int
) -> dict[str, int]:
    """Per variant, the analysed visitors with any pre-period total above 0."""
    sums = ref.visitor_sums(beacons, experiment, population)
    pre = covariates(beacons, experiment, days)
    variants_of: dict[str, set[str]] = defaultdict(set)
    for variant, visitor in sums:
        variants_of[visitor].add(variant)
    counts: Counter = Counter({variant: 0 for variant, _ in sums})
    for variant, visitor in sums:
        if len(variants_of[visitor]) == 1 and any(pre[visitor].values()):
            counts[variant] += 1
    return dict(sorted(counts.items()))
