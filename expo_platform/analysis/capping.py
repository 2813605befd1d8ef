"""Capping (winsorization) of heavy-tailed per-visitor metrics before the comparison.

A few visitors with huge baskets can dominate the variance of revenue, orders and units. With
a cap percentile q (`EXPO_CAP_PERCENTILE`, 0 < q <= 100; unset or 0: no capping), each of
`CAPPED_METRICS` is capped from above at its q-th percentile over the pooled per-visitor sums
of every variant (after visitors seen in several variants are excluded, zeros included):

    cap = numpy.percentile(values, q)      # linear interpolation between order statistics
    value -> min(value, cap)

Only the upper tail is capped (the sums are never negative). The capped values feed every
comparison that uses the metric: `revenue` capped feeds both revenue per visitor and
`revenue_per_visit`. The scorecard reports the percentile, the cap of each metric and how many
visitors were above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

CAPPED_METRICS = ("orders", "units", "revenue")


@dataclass(frozen=True)
class Capping:
    """What capping did: the percentile (None: off), and per metric its cap and the number of
    visitors whose sum was above it."""

    percentile: float | None = None
    caps: dict[str, float] = field(default_factory=dict)
    visitors_capped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The capping as a JSON-serialisable dict."""
        return {
            "percentile": self.percentile,
            "caps": {k: float(v) for k, v in self.caps.items()},
            "visitors_capped": {k: int(v) for k, v in self.visitors_capped.items()},
        }


def check_percentile(percentile: float | None) -> float | None:
    """The percentile as a float, None when capping is off (None or 0); else 0 < q <= 100."""
    if percentile is None or percentile == 0:
        return None
    value = float(percentile)
    if not (math.isfinite(value) and 0 < value <= 100):
        raise ValueError(f"cap percentile must lie in (0, 100], got {percentile!r}")
    return value


def winsorize(
    per_visitor: pd.DataFrame, percentile: float | None, metrics: tuple[str, ...] = CAPPED_METRICS
) -> tuple[pd.DataFrame, Capping]:
    """The per-visitor rows with `metrics` capped at the pooled percentile, and the caps."""
    q = check_percentile(percentile)
    if q is None:
        return per_visitor, Capping()
    capped = per_visitor.copy()
    caps, above = {}, {}
    for metric in metrics:
        values = capped[metric].to_numpy(dtype=float)
        if len(values) == 0:
            continue
        caps[metric] = float(np.percentile(values, q))
        above[metric] = int((values > caps[metric]).sum())
        capped[metric] = np.minimum(values, caps[metric])
    return capped, Capping(q, caps, above)
