"""Where the daily analysis keeps its scorecards and trend reports, and the newest of each.

Plain paths and JSON, no Spark: the dashboard reads the latest scorecard through here.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

from expo_platform.settings import Settings

_DAY_FOLDER = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")


def slug(name: str) -> str:
    """A file-name-safe form of an experiment or population name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def scorecard_path(settings: Settings, day: date, experiment: str, population: str) -> Path:
    """Where the scorecard of a day (cumulative up to it) is kept."""
    name = f"{slug(experiment)}.{slug(population)}.json"
    return settings.lake.reports_dir / "scorecards" / f"day={day.isoformat()}" / name


def trend_report_path(settings: Settings, day: date, experiment: str, population: str) -> Path:
    """Where the trend report of a day is kept."""
    name = f"{slug(experiment)}.{slug(population)}.html"
    return settings.lake.reports_dir / "trends" / f"day={day.isoformat()}" / name


def scorecard_days(settings: Settings) -> list[date]:
    """The days that have a scorecard folder, oldest first."""
    root = settings.lake.reports_dir / "scorecards"
    if not root.is_dir():
        return []
    days = []
    for folder in root.iterdir():
        match = _DAY_FOLDER.match(folder.name)
        if match and folder.is_dir():
            try:
                days.append(date.fromisoformat(match.group(1)))
            except ValueError:
                continue
    return sorted(days)


def latest_scorecard(
    settings: Settings, experiment: str, population: str
) -> tuple[date, dict] | None:
    """The newest day's scorecard of an experiment and population (cumulative up to that day)
    and the day, or None when the daily analysis has written none. A file being replaced
    is written atomically, so a reader sees the old one or the new one."""
    for day in reversed(scorecard_days(settings)):
        path = scorecard_path(settings, day, experiment, population)
        try:
            return day, json.loads(path.read_text())
        except (OSError, ValueError):  # none that day, or unreadable: an older one
            continue
    return None
