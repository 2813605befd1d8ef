"""The daily analysis assets: visitor_daily (and visitor_totals, the CUPED covariates'
source) -> experiment_scorecards -> trend_reports."""

import functools
from collections.abc import Iterator

import dagster as dg
from dagster_pyspark import PySparkResource

from assets.batch import markdown_table, materialized, spark
from assets.partitions import partition_day
from expo_platform.analysis import daily
from expo_platform.batch import steps
from expo_platform.ops.dagster_home import SPARK_POOL
from resources import MetricStoreResource, SettingsParam

GROUP = "analysis"


def build_analysis_assets(days: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The daily assets visitor_daily, visitor_totals, experiment_scorecards, trend_reports."""
    # Every asset here: on these partitions, in the spark pool (one Spark run at a time).
    daily_asset = functools.partial(
        dg.asset, partitions_def=days, pool=SPARK_POOL, group_name=GROUP
    )

    @daily_asset(
        # The day's hours, mapped from daily to hourly by Dagster. experiment_metrics of the
        # day's last hour exists only once sessions of the next day's first hour are in, and
        # bounces need that hour: depending on it says the day is final.
        deps=["sessions", "experiment_metrics"],
        check_specs=[
            dg.AssetCheckSpec(
                "visitor_sums_equal_hourly_metrics",
                asset="visitor_daily",
                blocking=True,
                description=(
                    "Per key and metric, the day's per-visitor sums equal its hourly batch metrics "
                    "summed (METRICS.md section 7); a mismatch stops the scorecards."
                ),
            )
        ],
        description=(
            "One row per (experiment, population, variant, visitor) and day: the visitor's sums of "
            "page_views, visits, bounces, orders, units, revenue and errors (METRICS.md section 7)."
        ),
    )
    def visitor_daily(
        context: dg.AssetExecutionContext,
        pyspark: PySparkResource,
        settings: SettingsParam,
        metric_store: MetricStoreResource,
    ) -> Iterator:
        """Sum the day's session facts per visitor, bounces made final by the following hour."""
        day = partition_day(context)
        result = steps.process_visitor_daily(spark(pyspark), settings, day)
        yield materialized(result, "visitor_daily")
        with metric_store.open() as store:
            keys, mismatches = steps.check_visitor_daily(spark(pyspark), settings, store, day)
        yield dg.AssetCheckResult(
            check_name="visitor_sums_equal_hourly_metrics",
            passed=not mismatches,
            description=f"{len(mismatches)} mismatch(es)" if mismatches else "every key adds up",
            metadata={
                "keys_checked": keys,
                "mismatches": len(mismatches),
                "first_mismatches": "\n".join(mismatches[:20]) or "none",
            },
        )

    @daily_asset(
        # Like visitor_daily, final once the next day's first hour is sessionized.
        deps=["beacons", "sessions"],
        description=(
            "One row per visitor and day, whatever the experiments: the visitor's totals of "
            "page_views, visits, bounces, orders, units, revenue and errors over all its "
            "beacons. The scorecards' CUPED covariates (EXPO_CUPED_DAYS before exposure)."
        ),
    )
    def visitor_totals(
        context: dg.AssetExecutionContext, pyspark: PySparkResource, settings: SettingsParam
    ) -> dg.MaterializeResult:
        """Sum the day's counted beacons and visits per visitor."""
        result = steps.process_visitor_totals(spark(pyspark), settings, partition_day(context))
        return materialized(result, "visitor_totals")

    @daily_asset(
        # Each day's scorecard is cumulative: it also reads every earlier day of visitor_daily,
        # and the visitor_totals of the EXPO_CUPED_DAYS before each visitor's first exposure.
        deps=["visitor_daily", "visitor_totals"],
        description=(
            "Scorecards of every experiment and population, cumulative up to the day: each "
            "variant against control (Welch, delta method), always-valid intervals, SRM. JSON "
            "per experiment."
        ),
    )
    def experiment_scorecards(
        context: dg.AssetExecutionContext, pyspark: PySparkResource, settings: SettingsParam
    ) -> dg.MaterializeResult:
        """Compute and write the day's scorecards."""
        result = daily.process_scorecards(spark(pyspark), settings, partition_day(context))
        files = result.preview["files"][0]
        return materialized(
            result,
            headline=markdown_table(result.preview["scorecards"]),
            **{f"file_{name}": dg.MetadataValue.path(path) for name, path in files.items()},
        )

    @daily_asset(
        deps=["experiment_scorecards"],
        description=(
            "A self-contained HTML trend report per experiment and population: hourly metrics "
            "by variant (speed and batch layers) and the cumulative lift with its always-valid "
            "interval."
        ),
    )
    def trend_reports(
        context: dg.AssetExecutionContext,
        pyspark: PySparkResource,
        settings: SettingsParam,
        metric_store: MetricStoreResource,
    ) -> dg.MaterializeResult:
        """Render the week's trend report of every experiment active on the day."""
        with metric_store.open() as store:
            result = daily.process_trend_reports(
                spark(pyspark), settings, store, partition_day(context)
            )
        files = result.preview["reports"][0]
        reports = {f"report_{n}": dg.MetadataValue.url(f"file://{p}") for n, p in files.items()}
        return materialized(result, **reports)

    return [visitor_daily, visitor_totals, experiment_scorecards, trend_reports]
