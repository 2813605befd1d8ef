"""Daily analysis steps: experiment scorecards (JSON) and trend reports (HTML).

Both read `visitor_daily` or the sessions rows, never the beacons; the statistics are in
`expo_platform.analysis.stats`, the charts in `expo_platform.analysis.charts`.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.analysis import pre_period, stats
from expo_platform.analysis.report_files import scorecard_path, trend_report_path
from expo_platform.analysis.reports import render_trend_report
from expo_platform.analysis.scorecards import (
    experiments_in,
    per_visitor,
    visitor_facts,
)
from expo_platform.batch.steps import StepResult, visitor_totals_of_day
from expo_platform.core.hours import ONE_HOUR, hour_iso
from expo_platform.errors import ExpoError
from expo_platform.serving.store import MetricStore
from expo_platform.settings import Settings

log = logging.getLogger(__name__)

MIN_VISITORS = 100  # per arm, before a cumulative-lift point is charted: earlier ones are noise
TREND_DAYS = 7  # a trend report covers the week up to its day
LIFT_METRIC = "orders"  # the cumulative lift chart follows orders per visitor
POPULATIONS = ("assigned", "qualified")


def days_up_to(settings: Settings, last: date, first: date | None = None) -> list[date]:
    """The days of visitor_daily that exist in [first, last]."""
    present = lake.VISITOR_DAILY.days_present(settings)
    return [d for d in present if d <= last and (first is None or d >= first)]


def _read_daily(spark: SparkSession, settings: Settings, days: list[date]) -> DataFrame:
    """The visitor_daily rows of these days, with their `day`."""
    frames = [
        lake.VISITOR_DAILY.read_days(spark, settings, [d]).withColumn("day", F.lit(d)) for d in days
    ]
    return lake.union_all(frames)


def _totals_by_day(spark: SparkSession, settings: Settings, days: list[date]) -> DataFrame:
    """The visitor_totals rows of these days, with their `day`. A day not materialized but
    with sessions (the asset not run yet) is computed from its sessions and beacons."""
    frames = []
    for d in days:
        if lake.VISITOR_TOTALS.has_partition(settings, d):
            frame = lake.VISITOR_TOTALS.read_days(spark, settings, [d])
        elif any(
            lake.SESSIONS.has_partition(settings, datetime.combine(d, time(h), UTC))
            for h in range(24)
        ):
            frame = visitor_totals_of_day(spark, settings, d)
        else:
            continue
        frames.append(frame.withColumn("day", F.lit(d)))
    if not frames:
        return spark.createDataFrame([], f"{pre_period.VISITOR_TOTALS_SCHEMA}, day date")
    return lake.union_all(frames)


def _pre_period(spark: SparkSession, settings: Settings, days: list[date]) -> DataFrame | None:
    """The visitor_totals days that the CUPED covariates of a scorecard over `days` may
    need, by day; None when CUPED is off."""
    n = settings.batch.cuped_days
    if not n:
        return None
    first, last = pre_period.pre_period_days(days[0], days[-1], n)
    wanted = [first + timedelta(days=k) for k in range((last - first).days + 1)]
    return _totals_by_day(spark, settings, wanted).persist(StorageLevel.MEMORY_AND_DISK)


def scorecard_rows(
    daily: DataFrame, totals: DataFrame | None, settings: Settings, experiment: str, population: str
) -> pd.DataFrame:
    """The per-visitor rows of a scorecard, with their CUPED covariates when `totals` is set."""
    rows = per_visitor(daily, experiment, population)
    if totals is not None:
        exposed = pre_period.first_exposures(daily, experiment)
        pre = pre_period.covariates(exposed, totals, settings.batch.cuped_days)
        rows = pre_period.with_covariates(rows, pre)
    return rows.toPandas()


def build_scorecard(
    rows: pd.DataFrame, settings: Settings, experiment: str, population: str, days: list[date]
) -> dict:
    """The scorecard document: what, over which days, then the statistics."""
    card = stats.scorecard(
        rows,
        weights=settings.batch.srm_weights_for(experiment),
        cap_percentile=settings.batch.cap_percentile,
        cuped_days=settings.batch.cuped_days,
    )
    return {
        "experiment": experiment,
        "population": population,
        "from": days[0].isoformat(),
        "to": days[-1].isoformat(),
        **card,
    }


def compute_scorecard(
    spark: SparkSession,
    settings: Settings,
    experiment: str,
    population: str,
    first: date | None = None,
    last: date | None = None,
) -> dict:
    """The scorecard of one experiment and population over the days [first, last]."""
    if population not in POPULATIONS:
        raise ExpoError(f"population must be assigned or qualified, not {population!r}")
    days = days_up_to(settings, last or date.max, first)
    if not days:
        raise ExpoError(
            "no visitor_daily days in that range: run `expo batch` over whole days first"
        )
    totals = _pre_period(spark, settings, days)
    try:
        rows = scorecard_rows(
            _read_daily(spark, settings, days), totals, settings, experiment, population
        )
    finally:
        if totals is not None:
            totals.unpersist()
    if rows.empty:
        raise ExpoError(
            f"experiment {experiment!r} has no {population} visitors between {days[0]} and "
            f"{days[-1]}"
        )
    return build_scorecard(rows, settings, experiment, population, days)


def _headline(card: dict) -> list[dict]:
    """One line per variant for the asset preview: the orders comparison and the SRM."""
    return [
        {
            "experiment": card["experiment"],
            "population": card["population"],
            "variant": c["variant"],
            "orders_lift": None if c["lift"] is None else round(c["lift"], 4),
            "p_value": None if c["p_value"] is None else round(c["p_value"], 6),
            "srm_p": round(card["srm"]["p_value"], 6) if card["srm"]["p_value"] else None,
        }
        for c in card["comparisons"]
        if c["metric"] == LIFT_METRIC
    ]


def process_scorecards(spark: SparkSession, settings: Settings, day: date) -> StepResult:
    """Scorecards, cumulative up to `day`, of every experiment with visitors that day."""
    days = days_up_to(settings, day)
    if day not in days:
        raise ExpoError(f"visitor_daily of {day} is not materialized yet")
    daily = _read_daily(spark, settings, days).persist(StorageLevel.MEMORY_AND_DISK)
    totals = _pre_period(spark, settings, days)
    try:
        pairs = experiments_in(_read_daily(spark, settings, [day]))
        counts = {"scorecards": 0, "significant": 0, "srm_flagged": 0}
        preview, files = [], {}
        for experiment, population in pairs:
            rows = scorecard_rows(daily, totals, settings, experiment, population)
            card = build_scorecard(rows, settings, experiment, population, days)
            path = scorecard_path(settings, day, experiment, population)
            lake.write_atomically(path, json.dumps(card, indent=2, sort_keys=True))
            files[f"{experiment}.{population}"] = str(path)
            counts["scorecards"] += 1
            counts["significant"] += sum(
                1 for c in card["comparisons"] if c["p_value"] is not None and c["p_value"] < 0.05
            )
            counts["srm_flagged"] += int(card["srm"]["flagged"])
            preview += _headline(card)
    finally:
        daily.unpersist()
        if totals is not None:
            totals.unpersist()
    log.info("scorecards of %s: %s", day, counts)
    return StepResult(
        datetime.combine(day, time(), UTC), counts, {"scorecards": preview, "files": [files]}
    )


def lift_path(rows: pd.DataFrame, variant: str) -> list[dict]:
    """The cumulative relative lift of LIFT_METRIC per visitor, with its always-valid band."""
    path = []
    with warnings.catch_warnings():
        # The first hours hold few visitors, often with identical values: scipy says so.
        warnings.simplefilter("ignore", RuntimeWarning)
        points = stats.cumulative_lift_path(rows, variant, LIFT_METRIC, time_col="hour_ms")
    for point in points:
        base = point["control_value"]
        if min(point["n_control"], point["n_variant"]) < MIN_VISITORS:
            continue
        if not base or point["difference"] is None:
            continue
        low, high = point["seq_ci_low"], point["seq_ci_high"]
        path.append(
            {
                "time_ms": point["time"],
                "lift": point["difference"] / base,
                "low": None if low is None else low / base,
                "high": None if high is None else high / base,
            }
        )
    return path


def process_trend_reports(
    spark: SparkSession, settings: Settings, store: MetricStore, day: date
) -> StepResult:
    """A trend report per experiment and population over the week up to `day`."""
    days = days_up_to(settings, day, day - timedelta(days=TREND_DAYS - 1))
    if day not in days:
        raise ExpoError(f"visitor_daily of {day} is not materialized yet")
    start = datetime.combine(days[0], time(), UTC)
    end = datetime.combine(day, time(), UTC) + timedelta(days=1)  # exclusive
    hours = [start + ONE_HOUR * h for h in range(int((end - start) / ONE_HOUR))]
    sessions = lake.SESSIONS.read_partitions(spark, settings, hours)
    later = lake.SESSIONS.read_partitions(spark, settings, [*hours, end])
    hourly = visitor_facts(sessions, later, "hour_ms").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        pairs = experiments_in(_read_daily(spark, settings, [day]))
        files = {}
        for experiment, population in pairs:
            rows = per_visitor(hourly, experiment, population, "hour_ms").toPandas()
            control = stats.choose_control(rows["variant"].unique())
            paths = {
                v: lift_path(rows, v) for v in sorted(rows["variant"].unique()) if v != control
            }
            points = [
                p
                for layer in ("batch", "speed")
                for p in store.query(
                    layer=layer,
                    experiment=experiment,
                    hour_from=hour_iso(start),
                    hour_to=hour_iso(end - ONE_HOUR),
                )
            ]
            card_file = scorecard_path(settings, day, experiment, population)
            card = json.loads(card_file.read_text()) if card_file.exists() else None
            page = render_trend_report(
                experiment, population, points, paths, LIFT_METRIC, card, datetime.now(UTC)
            )
            path = trend_report_path(settings, day, experiment, population)
            lake.write_atomically(path, page)
            files[f"{experiment}.{population}"] = path
    finally:
        hourly.unpersist()
    counts = {"reports": len(files), "days": len(days)}
    return StepResult(start, counts, {"reports": [{k: str(v) for k, v in files.items()}]})
