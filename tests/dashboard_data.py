"""A day of store points for the dashboard tests, written straight through MetricStore (no
Spark): an A/B experiment with both layers, an experiment with one variant, data quality,
rolling visitors and a scorecard file."""

from __future__ import annotations

import json
import random
from datetime import date

import numpy as np
import pandas as pd

from expo_platform.analysis import stats
from expo_platform.analysis.report_files import scorecard_path
from expo_platform.core.beacons import REJECT_REASONS
from expo_platform.serving.store import MetricStore, Point
from expo_platform.settings import Settings

DAY = date(2026, 3, 2)
AB = "checkout-button"
SOLO = "solo-banner"
BATCH_HOURS = range(0, 22)  # the batch layer has finished hours 00-21
SPEED_HOURS = range(18, 24)  # the speed layer has 18-23: 22 and 23 only from speed
DRIFTING_HOUR = 20  # speed orders 10% off batch in this hour


def hour(h: int) -> str:
    return f"2026-03-02T{h:02d}:00:00Z"


def _metrics(h: int, variant: str, population: str) -> dict[str, float]:
    lift = 1.15 if variant == "treatment" else 1.0
    scale = 0.4 if population == "qualified" else 1.0
    base = (200 + 120 * np.sin(h / 24 * 2 * np.pi)) * scale
    visitors = round(base)
    visits = round(base * 1.2)
    page_views = round(base * 3.1)
    return {
        "visitors": visitors,
        "visitors_24h": visitors * 9,
        "visits": visits,
        "page_views": page_views,
        "bounces": round(visits * 0.35),
        "orders": round(base * 0.06 * lift),
        "units": round(base * 0.09 * lift),
        "revenue": round(base * 0.06 * lift * 41.5, 2),
        "errors": round(page_views * 0.012),
        "page_load_ms_sum": page_views * 850.0,
        "page_load_ms_count": float(page_views),
    }


def experiment_points(hours, layer: str, experiment: str, variants) -> list[Point]:
    points = []
    for h in hours:
        for variant in variants:
            for population in ("assigned", "qualified"):
                for metric, value in _metrics(h, variant, population).items():
                    if layer == "speed" and h == DRIFTING_HOUR and metric == "orders":
                        value = round(value * 1.1) + 1
                    points.append(
                        Point(metric, experiment, variant, population, hour(h), layer, value)
                    )
    return points


def quality_points(hours, layer: str) -> list[Point]:
    points = []
    for h in hours:
        total = 3000 + 40 * h
        rejected = {reason: (h * 7 + i * 5) % 23 for i, reason in enumerate(REJECT_REASONS)}
        if layer == "speed":
            rejected["wrong_partition"] = 0  # the speed layer has no landing folder
        duplicates = 20 + h % 5
        values = {
            "beacons_total": total,
            "beacons_valid": total - sum(rejected.values()) - duplicates,
            "beacons_duplicate": duplicates,
            **{f"beacons_rejected_{r}": n for r, n in rejected.items()},
        }
        if layer == "speed":
            values["beacons_late"] = 3 + h % 4
        points += [Point(m, "", "", "", hour(h), layer, float(v)) for m, v in values.items()]
    return points


def rolling_points(until_minute: int, experiment: str = AB, variants=("control", "treatment")):
    """Rolling visitors every 5 minutes of hour 23, up to `until_minute`."""
    points = []
    for minute in range(0, until_minute + 1, 5):
        stamp = f"2026-03-02T23:{minute:02d}:00Z"
        for i, variant in enumerate(variants):
            for population, scale in (("assigned", 1.0), ("qualified", 0.4)):
                one = (400 + minute * 2 + i * 3) * scale
                points += [
                    Point(
                        "visitors_rolling_1h", experiment, variant, population, stamp, "speed", one
                    ),
                    Point(
                        "visitors_rolling_24h",
                        experiment,
                        variant,
                        population,
                        stamp,
                        "speed",
                        one * 11,
                    ),
                ]
    return points


def scorecard_card(experiment: str = AB, population: str = "assigned") -> dict:
    """A real scorecard (stats.scorecard) over made-up visitors: treatment orders more."""
    rng = random.Random(5)
    rows = []
    for variant, rate in (("control", 0.05), ("treatment", 0.07)):
        for i in range(3000):
            visits = 1 + (rng.random() < 0.3)
            orders = int(rng.random() < rate)
            page_views = visits * rng.randint(1, 5)
            rows.append(
                {
                    "visitor_id": f"{variant}-{i}",
                    "variant": variant,
                    "page_views": page_views,
                    "visits": visits,
                    "bounces": int(page_views == 1),
                    "orders": orders,
                    "units": orders * rng.randint(1, 3),
                    "revenue": orders * rng.uniform(10, 80),
                    "errors": int(rng.random() < 0.02),
                }
            )
    card = stats.scorecard(pd.DataFrame(rows))
    return {
        "experiment": experiment,
        "population": population,
        "from": DAY.isoformat(),
        "to": DAY.isoformat(),
        **card,
    }


def seed(settings: Settings, *, scorecard: bool = True) -> None:
    """Both layers of the A/B experiment, a one-variant experiment, quality, rolling visitors
    (up to 23:30) and the day's scorecard."""
    with MetricStore(settings.lake.metric_store) as store:
        store.upsert(experiment_points(BATCH_HOURS, "batch", AB, ("control", "treatment")))
        store.upsert(experiment_points(SPEED_HOURS, "speed", AB, ("control", "treatment")))
        store.upsert(experiment_points(range(10, 22), "batch", SOLO, ("control",)))
        store.upsert(experiment_points(SPEED_HOURS, "speed", SOLO, ("control",)))
        store.upsert(quality_points(BATCH_HOURS, "batch"))
        store.upsert(quality_points(SPEED_HOURS, "speed"))
        store.upsert(rolling_points(30))
    if scorecard:
        path = scorecard_path(settings, DAY, AB, "assigned")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scorecard_card(), indent=2, sort_keys=True))
