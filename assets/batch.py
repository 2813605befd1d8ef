"""The hourly batch assets: beacons -> sessions -> experiment metrics, plus data quality."""

import functools
import warnings
from collections.abc import Iterator

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from assets.partitions import partition_hour
from expo_platform import lake
from expo_platform.batch import steps
from expo_platform.core.checks import (
    metrics_by_key,
    reject_rate,
    rejected_by_reason,
    sanity_violations,
)
from expo_platform.core.hours import hour_iso
from expo_platform.ops.dagster_home import SPARK_POOL
from expo_platform.serving.reconcile import Reconciliation, reconcile_hour
from expo_platform.spark import quiet
from resources import MetricStoreResource, SettingsParam

GROUP = "batch"
PREVIOUS_HOUR = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
# experiment_metrics[H] is final once sessions[H+1] is in (bounces). It also reads the 23
# sessions partitions before H for visitors_24h; declaring those would make every backfill
# of N hours fan out to N + 23 metric hours, so a late-data re-run covers them instead.
with warnings.catch_warnings():
    # The parameter is beta; the newest hour, whose next hour does not exist yet, needs it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    METRICS_INPUTS = dg.TimeWindowPartitionMapping(
        start_offset=0, end_offset=1, allow_nonexistent_upstream_partitions=True
    )


def spark(resource: PySparkResource) -> SparkSession:
    """The resource's Spark session, with routine warnings silenced."""
    return quiet(resource.spark_session)


def materialized(result, preview: str | None = None, **extra) -> dg.MaterializeResult:
    """A step's outcome for the UI: its counts, `extra`, and its `preview` rows as a table."""
    metadata = {**result.counts, **extra}
    if preview:
        metadata["preview"] = markdown_table(result.preview[preview])
    return dg.MaterializeResult(metadata=metadata)


def markdown_table(rows: list[dict]) -> dg.MetadataValue:
    """A preview of rows as a Markdown table for the Dagster UI."""
    if not rows:
        return dg.MetadataValue.md("(no rows)")
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in header) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


METRICS_CHECKS = [
    dg.AssetCheckSpec("metric_sanity", asset="experiment_metrics"),
    dg.AssetCheckSpec(
        "speed_batch_reconciliation",
        asset="experiment_metrics",
        description="Drift of the speed layer's points from the batch layer's, per metric.",
    ),
]


def build_batch_assets(hourly: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The hourly assets beacons (with beacon_rejects), data_quality, sessions and
    experiment_metrics, on the code location's hourly partitions."""
    # Every asset here: on these partitions, in the spark pool (one Spark run at a time).
    hourly_asset = functools.partial(
        dg.asset, partitions_def=hourly, pool=SPARK_POOL, group_name=GROUP
    )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                "beacons",
                group_name=GROUP,
                deps=["landing_zone"],
                description="Validated, de-duplicated beacons of the hour, columnar (Parquet).",
            ),
            dg.AssetSpec(
                "beacon_rejects",
                group_name=GROUP,
                description="The quarantine: raw text and reason of every line that does not "
                "count.",
            ),
        ],
        partitions_def=hourly,
        pool=SPARK_POOL,
        check_specs=[
            dg.AssetCheckSpec(
                "reject_rate_below_threshold",
                asset="beacons",
                blocking=True,
                description="Stops an hour whose share of rejected lines passes "
                "EXPO_MAX_REJECT_RATE.",
            )
        ],
    )
    def beacons(
        context: dg.AssetExecutionContext, pyspark: PySparkResource, settings: SettingsParam
    ) -> Iterator:
        """Parse, validate and de-duplicate the hour's landing files."""
        hour = partition_hour(context)
        # Taken before reading: a file that lands meanwhile makes the late-data sensor redo it.
        signature = lake.landing_signature(settings, hour)
        result = steps.process_beacons(spark(pyspark), settings, hour)
        counts = result.counts
        rejected = rejected_by_reason(counts)
        total = counts["beacons_total"]
        yield dg.MaterializeResult(
            asset_key="beacons",
            metadata={
                "landing_files": counts["files"],
                "landing_signature": signature,
                "beacons_total": total,
                "rows": counts["beacons_valid"],
                "duplicates": counts["beacons_duplicate"],
                "preview": markdown_table(result.preview["beacons"]),
            },
        )
        yield dg.MaterializeResult(
            asset_key="beacon_rejects",
            metadata={
                "rows": sum(rejected.values()) + counts["beacons_duplicate"],
                **{f"rejected_{r}": n for r, n in rejected.items()},
                "duplicates": counts["beacons_duplicate"],
                "preview": markdown_table(result.preview["beacon_rejects"]),
            },
        )
        rate = reject_rate(counts)
        yield dg.AssetCheckResult(
            asset_key="beacons",
            check_name="reject_rate_below_threshold",
            passed=rate <= settings.batch.max_reject_rate,
            metadata={"reject_rate": rate, "threshold": settings.batch.max_reject_rate, **rejected},
        )

    @hourly_asset(
        deps=["beacons", "beacon_rejects"],
        description="Data-quality metrics of the hour (METRICS.md section 5), layer batch.",
    )
    def data_quality(
        context: dg.AssetExecutionContext,
        pyspark: PySparkResource,
        settings: SettingsParam,
        metric_store: MetricStoreResource,
    ) -> dg.MaterializeResult:
        """Count total, valid, duplicate and rejected beacons per reason into the metric store."""
        with metric_store.open() as store:
            result = steps.write_quality(spark(pyspark), settings, store, partition_hour(context))
        return materialized(result, points_written=len(result.counts))

    @hourly_asset(
        deps=["beacons", dg.AssetDep("sessions", partition_mapping=PREVIOUS_HOUR)],
        description=(
            "Hive external table (ORC, partitioned by hourly_partitioner): one row per visit "
            "active in the hour, with its carried state and the hour's facts per population; "
            "beside it, the hour's visitor sketches per experiment key (Parquet, for "
            "visitors_24h)."
        ),
    )
    def sessions(
        context: dg.AssetExecutionContext, pyspark: PySparkResource, settings: SettingsParam
    ) -> dg.MaterializeResult:
        """Sessionize the hour's beacons, continuing the visits still open at the end of H-1."""
        result = steps.process_sessions(spark(pyspark), settings, partition_hour(context))
        return materialized(result, "sessions", table=lake.sessions_table(settings))

    @hourly_asset(
        # speed_metrics: the reconciliation check compares the stream's points of the hour.
        deps=[dg.AssetDep("sessions", partition_mapping=METRICS_INPUTS), "speed_metrics"],
        check_specs=METRICS_CHECKS,
        description="Hourly experiment metrics (METRICS.md section 4), layer batch, in the store.",
    )
    def experiment_metrics(
        context: dg.AssetExecutionContext,
        pyspark: PySparkResource,
        settings: SettingsParam,
        metric_store: MetricStoreResource,
    ) -> Iterator:
        """Compute the hour's metrics from sessions[H] and sessions[H+1] and write layer batch."""
        hour = partition_hour(context)
        with metric_store.open() as store:
            result = steps.process_metrics(spark(pyspark), settings, store, hour)
            # The check reads back what the store holds, not what was computed.
            points = store.query(layer="batch", hour_from=hour_iso(hour), hour_to=hour_iso(hour))
            drift = reconcile_hour(store, hour_iso(hour), settings.batch.reconcile_tolerance)
        yield materialized(result, "experiment_metrics")
        by_key = metrics_by_key(points)
        broken = sanity_violations(by_key)
        yield dg.AssetCheckResult(
            check_name="metric_sanity",
            passed=not broken,
            metadata={"keys_checked": len(by_key), "violations": "\n".join(broken) or "none"},
        )
        yield reconciliation_result(drift)

    return [beacons, data_quality, sessions, experiment_metrics]


def reconciliation_result(drift: Reconciliation) -> dg.AssetCheckResult:
    """The reconciliation check's outcome, with the drift of every metric as metadata."""
    if not drift.compared:
        note = "no speed points for this hour: nothing to reconcile"
    elif drift.passed:
        note = f"every metric within {drift.tolerance:.2%}"
    else:
        note = f"over {drift.tolerance:.2%}: " + ", ".join(drift.failing())
    return dg.AssetCheckResult(
        check_name="speed_batch_reconciliation",
        passed=drift.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=note,
        metadata={
            "speed_points": drift.speed_points,
            "batch_points": drift.batch_points,
            "tolerance": drift.tolerance,
            **{f"drift_{m}": d for m, d in drift.drift.items()},
            "worst_keys": markdown_table(
                [{"metric": m, "key": k} for m, k in drift.worst_keys.items() if k]
            ),
        },
    )
