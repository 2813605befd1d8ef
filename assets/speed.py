"""The speed layer in the asset graph: the Kafka topic and the streaming app's outputs.

They are external assets: the long-running streaming app writes them, not Dagster. The
streaming supervisor records an observation on them every tick (lag, last micro-batch,
freshness, rates), so their pages plot these over time, and reports the freshness check.
"""

import time

import dagster as dg

from expo_platform.ops.supervision import SpeedFreshness, speed_freshness
from expo_platform.settings import Settings
from resources import SettingsParam

GROUP = "speed"

kafka_beacons = dg.AssetSpec(
    "kafka_beacons",
    group_name=GROUP,
    kinds={"kafka"},
    description="The Kafka topic of beacons (EXPO_KAFKA_TOPIC) that the streaming app reads.",
)
speed_metrics = dg.AssetSpec(
    "speed_metrics",
    deps=[kafka_beacons],
    group_name=GROUP,
    kinds={"spark"},
    description="Metric-store points of layer speed, written by the streaming app every "
    "micro-batch; the merged view shows them until batch points replace them.",
)
landing_zone = dg.AssetSpec(
    "landing_zone",
    deps=[kafka_beacons],
    group_name=GROUP,
    kinds={"spark"},
    description="Raw beacons by event hour (landing/beacons/hour=H/), landed by the streaming "
    "app (and collectors): the batch layer's input.",
)
SPEED_ASSETS = [kafka_beacons, speed_metrics, landing_zone]


def freshness_result(fresh: SpeedFreshness, settings: Settings, now: float) -> dg.AssetCheckResult:
    """The freshness check's outcome: fails when the speed metrics are too far behind."""
    return dg.AssetCheckResult(**freshness_fields(fresh, settings, now))


def freshness_evaluation(
    fresh: SpeedFreshness, settings: Settings, now: float
) -> dg.AssetCheckEvaluation:
    """The same outcome as a runless evaluation, which the supervisor records every tick."""
    return dg.AssetCheckEvaluation(**freshness_fields(fresh, settings, now))


def freshness_fields(fresh: SpeedFreshness, settings: Settings, now: float) -> dict:
    """The fields of the freshness check's outcome."""
    behind = fresh.behind_minutes(now)
    limit = settings.supervisor.speed_stale_minutes
    if behind is None:
        note = "no micro-batch has written speed metrics yet"
    else:
        note = f"newest event time {behind:.1f} min behind the clock (limit {limit} min)"
    return dict(
        asset_key=speed_metrics.key,
        check_name="speed_metrics_fresh",
        passed=not fresh.stale(now, limit),
        severity=dg.AssetCheckSeverity.ERROR,
        description=note,
        metadata={
            "behind_minutes": behind if behind is not None else -1.0,
            "limit_minutes": limit,
            "last_batch": fresh.last_batch or "none",
        },
    )


@dg.asset_check(
    asset=speed_metrics.key,
    name="speed_metrics_fresh",
    description="The speed layer's newest event time is at most EXPO_SPEED_STALE_MINUTES "
    "behind the clock (also reported by the streaming supervisor every tick).",
)
def speed_metrics_fresh(settings: SettingsParam) -> dg.AssetCheckResult:
    return freshness_result(speed_freshness(settings), settings, time.time())
