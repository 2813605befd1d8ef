"""Jobs of the batch layer: ingest an hour, compute the metrics of the hour before it, and
analyse each finished day. Each job's partitions are its assets' (the code location's hourly
or daily partitions)."""

from __future__ import annotations

import dagster as dg

INGEST_ASSETS = ("beacons", "beacon_rejects", "data_quality", "sessions")

hourly_ingest_job = dg.define_asset_job(
    "hourly_ingest",
    selection=dg.AssetSelection.assets(*INGEST_ASSETS),
    description="Validate an hour's landing files, count its data quality, sessionize it.",
)

hourly_metrics_job = dg.define_asset_job(
    "hourly_metrics",
    selection=dg.AssetSelection.assets("experiment_metrics"),
    description="Experiment metrics of an hour; needs the sessions of the hour after it.",
)

daily_analysis_job = dg.define_asset_job(
    "daily_analysis",
    selection=dg.AssetSelection.assets(
        "visitor_daily", "visitor_totals", "experiment_scorecards", "trend_reports"
    ),
    description="Per-visitor sums of a finished day (per experiment, and the CUPED totals), "
    "then scorecards and trend reports.",
)
