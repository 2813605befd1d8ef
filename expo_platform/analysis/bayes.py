"""Bayesian read-out of a comparison, beside the frequentist one (GrowthBook style).

With a flat prior and a normal approximation, the posterior of the true difference
(variant - control) is Normal(d, se^2): d is the observed difference and se its standard
error, the same two figures behind the fixed-horizon interval (Welch's unpooled standard
error for mean metrics, the delta method for ratio metrics).

The read-out is taken in the metric's good direction: G = D for metrics where higher is
better, G = -D for `LOWER_IS_BETTER` ones (bounce and error rates). With g the observed gain
(d or -d) and phi, Phi the standard normal density and distribution:

- chance_to_beat_control = P(G > 0) = Phi(g / se);
- expected_loss = E[max(-G, 0)] = se phi(g / se) - g Phi(-g / se): what shipping the variant
  costs on average, in the metric's own units (per visitor, or of the ratio), if it is worse;
- expected_loss_control = E[max(G, 0)] = se phi(g / se) + g Phi(g / se): what keeping the
  control costs if the variant is better. The two losses differ by exactly g.

GrowthBook reports the same on the relative lift; here the absolute difference is used, so
the losses are in the units of `difference` (divide by control_value for an approximate
share of the control). All figures are None when the standard error is undefined or zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

LOWER_IS_BETTER = frozenset({"bounce_rate", "error_rate"})


@dataclass(frozen=True)
class BayesReadout:
    """Chance that the variant beats the control, and the expected loss of either choice."""

    chance_to_beat_control: float | None = None
    expected_loss: float | None = None
    expected_loss_control: float | None = None


def normal_readout(
    difference: float | None, se: float | None, lower_is_better: bool = False
) -> BayesReadout:
    """The read-out of a difference whose posterior is Normal(difference, se^2)."""
    if difference is None or se is None or not math.isfinite(se) or se <= 0:
        return BayesReadout()
    gain = -difference if lower_is_better else difference
    z = gain / se
    density = float(stats.norm.pdf(z))
    return BayesReadout(
        chance_to_beat_control=float(stats.norm.cdf(z)),
        # Far in a tail the two terms nearly cancel: rounding must not make a loss negative.
        expected_loss=max(se * density - gain * float(stats.norm.cdf(-z)), 0.0),
        expected_loss_control=max(se * density + gain * float(stats.norm.cdf(z)), 0.0),
    )


def readout_for(metric: str, difference: float | None, se: float | None) -> BayesReadout:
    """The read-out of one metric's comparison, in the metric's good direction."""
    return normal_readout(difference, se, lower_is_better=metric in LOWER_IS_BETTER)
