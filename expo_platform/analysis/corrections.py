"""Multiple-comparison corrections over the p-values of one scorecard.

The family is every comparison of the scorecard (each non-control variant x each metric)
whose p-value is defined; an undefined p-value (None) is left out of the family, so it
neither counts in m nor gets an adjusted value.

- Holm-Bonferroni (controls the family-wise error rate): with the m p-values sorted,
  p(1) <= ... <= p(m), the adjusted p(i) is max over j <= i of min(1, (m - j + 1) p(j)).
  Tied p-values get the same adjusted value.
- Benjamini-Hochberg (controls the false discovery rate): `scipy.stats.false_discovery_control`
  with method "bh", i.e. min over j >= i of min(1, m p(j) / j).

A comparison is significant after correction when its adjusted p-value is below alpha.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def _defined(p_values: Sequence[float | None]) -> tuple[list[int], np.ndarray]:
    """Positions of the defined p-values, and those p-values."""
    where = [i for i, p in enumerate(p_values) if p is not None]
    return where, np.array([p_values[i] for i in where], dtype=float)


def _placed(size: int, where: list[int], adjusted: np.ndarray) -> list[float | None]:
    """The adjusted values back at their positions, None elsewhere."""
    result: list[float | None] = [None] * size
    for position, value in zip(where, adjusted, strict=True):
        result[position] = float(value)
    return result


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, None where the p-value is None."""
    where, p = _defined(p_values)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled) if m else scaled
    return _placed(len(p_values), where, adjusted)


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values, None where the p-value is None."""
    where, p = _defined(p_values)
    adjusted = stats.false_discovery_control(p, method="bh") if len(p) else p
    return _placed(len(p_values), where, np.asarray(adjusted))
