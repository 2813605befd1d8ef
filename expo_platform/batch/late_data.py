"""Late data: landing hours that changed after the batch layer processed them, and what to redo.

The `beacons` asset records the landing fingerprint (`lake.landing_signature`) it read. A
landing hour whose fingerprint differs now got new or modified files since. Redoing hour H
means ingesting H again, then the later hours whose sessions can carry a visit from H (a
visit lasts less than 12 hours), then the metrics that read any of those sessions: H-1
(bounces need the next hour) to H+23 (`visitors_24h` looks back 23 hours). Only hours that
were processed before are redone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from expo_platform.core.hours import ONE_HOUR, hour_range
from expo_platform.core.visits import VISIT_MAX_MS

SESSION_REACH = timedelta(milliseconds=VISIT_MAX_MS)
METRICS_BEFORE, METRICS_AFTER = ONE_HOUR, timedelta(hours=23)


def changed_hours(
    recorded: Mapping[datetime, str], current: Mapping[datetime, str]
) -> list[datetime]:
    """Hours processed with a fingerprint (`recorded`) that differs from the landing's now."""
    return sorted(h for h, signature in recorded.items() if current.get(h, "") != signature)


def redo_plan(
    changed: datetime, ingested: Iterable[datetime], with_metrics: Iterable[datetime]
) -> tuple[list[datetime], list[datetime]]:
    """(hours to ingest again in order, hours whose metrics to compute again) for a change."""
    ingested, with_metrics = set(ingested), set(with_metrics)
    ingest = [h for h in hour_range(changed, changed + SESSION_REACH) if h in ingested]
    metrics = [
        h
        for h in hour_range(changed - METRICS_BEFORE, changed + METRICS_AFTER)
        if h in with_metrics
    ]
    return ingest, metrics
