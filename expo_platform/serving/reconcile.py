"""Speed-versus-batch reconciliation of a finished hour: how far the stream drifted.

The batch layer is the reference (METRICS.md): for each metric the drift is the total
absolute difference of the speed points from the batch points, over every key either layer
has, relative to the batch total. A key only one layer has counts with the other at 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from expo_platform.core.metrics import EXPERIMENT_METRICS
from expo_platform.serving.store import MetricStore, Point


@dataclass(frozen=True)
class Reconciliation:
    """The drift per metric of one hour, and whether all of it is within the tolerance."""

    hour: str
    tolerance: float
    speed_points: int
    batch_points: int
    drift: dict[str, float] = field(default_factory=dict)
    worst_keys: dict[str, str] = field(default_factory=dict)  # metric -> key furthest apart

    @property
    def compared(self) -> bool:
        """Whether there was anything to compare: the stream may not have run that hour."""
        return self.speed_points > 0 and self.batch_points > 0

    @property
    def passed(self) -> bool:
        """Every metric's drift within the tolerance (an hour without speed points passes)."""
        return all(d <= self.tolerance for d in self.drift.values())

    def failing(self) -> list[str]:
        """The metrics over the tolerance, sorted."""
        return sorted(m for m, d in self.drift.items() if d > self.tolerance)


def relative_drift(speed: dict, batch: dict) -> tuple[float, str]:
    """Σ|speed - batch| / Σ|batch| over the union of keys, and the key furthest apart."""
    keys = set(speed) | set(batch)
    gaps = {k: abs(speed.get(k, 0.0) - batch.get(k, 0.0)) for k in keys}
    total = sum(abs(v) for v in batch.values())
    worst = max(gaps, key=gaps.get) if gaps else None
    diff = sum(gaps.values())
    label = "/".join(worst) if worst and gaps[worst] > 0 else ""
    if total == 0:  # speed saw something batch did not: all of it is drift
        return (0.0 if diff == 0 else 1.0), label
    return diff / total, label


def reconcile_hour(store: MetricStore, hour: str, tolerance: float) -> Reconciliation:
    """Compare the speed and batch points of one hour (ISO), metric by metric."""
    layers = {
        layer: store.query(layer=layer, metrics=EXPERIMENT_METRICS, hour_from=hour, hour_to=hour)
        for layer in ("speed", "batch")
    }
    return _reconcile(hour, tolerance, layers["speed"], layers["batch"])


def reconcile_hours(
    store: MetricStore, hour_from: str, hour_to: str, tolerance: float
) -> list[Reconciliation]:
    """`reconcile_hour` of every hour in [hour_from, hour_to] (ISO) with points of either
    layer, sorted by hour, in two reads of the store."""
    by_hour: dict[str, dict[str, list[Point]]] = defaultdict(lambda: {"speed": [], "batch": []})
    for layer in ("speed", "batch"):
        for p in store.query(
            layer=layer, metrics=EXPERIMENT_METRICS, hour_from=hour_from, hour_to=hour_to
        ):
            by_hour[p.hour][layer].append(p)
    return [
        _reconcile(hour, tolerance, layers["speed"], layers["batch"])
        for hour, layers in sorted(by_hour.items())
    ]


def _reconcile(
    hour: str, tolerance: float, speed: list[Point], batch: list[Point]
) -> Reconciliation:
    """The drift of one hour's speed points from its batch points, metric by metric."""
    values: dict[str, dict[str, dict]] = {"speed": defaultdict(dict), "batch": defaultdict(dict)}
    for layer, points in (("speed", speed), ("batch", batch)):
        for p in points:
            values[layer][p.metric][(p.experiment, p.variant, p.population)] = p.value
    drift, worst = {}, {}
    if speed:
        for metric in EXPERIMENT_METRICS:
            d, key = relative_drift(values["speed"][metric], values["batch"][metric])
            drift[metric], worst[metric] = round(d, 6), key
    return Reconciliation(hour, tolerance, len(speed), len(batch), drift, worst)
