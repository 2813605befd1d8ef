"""What the dashboard reads: the experiments the metric store knows, their traffic splits
(from the latest scorecard, else the live rolling visitors) and the newest rolling-visitors
points, as plain data (`Experiment`, `Split`, `Point`). The pages' documents are built from
them in `dashboard_documents`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from expo_platform.analysis import charts
from expo_platform.analysis.report_files import latest_scorecard
from expo_platform.analysis.stats import choose_control, srm
from expo_platform.errors import ExpoError
from expo_platform.serving.store import MetricStore, Point
from expo_platform.settings import Settings

POPULATIONS = ("assigned", "qualified")
# Hours of hourly trend a page shows, up to the experiment's newest hour (0: all of it).
WINDOWS = {24: "24 h", 72: "3 days", 168: "7 days", 0: "all"}
DEFAULT_WINDOW = 72
QUALITY_HOURS = 48  # data quality and drift on the overview: the last two days
ROLLING_HOURS = 6  # the rolling visitors' charts: the last six hours of minute stamps
STALE_ROLLING = timedelta(minutes=30)  # older than this behind the newest stamp: stale
HOUR_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _moment(stamp: str) -> datetime:
    return datetime.strptime(stamp, HOUR_FORMAT).replace(tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(HOUR_FORMAT)


def _shown(stamp: str) -> str:
    """A stored stamp as people read it: `2026-03-02 05:00 UTC`."""
    return f"{charts.plot_time(stamp)} UTC"


@dataclass(frozen=True)
class Experiment:
    """An experiment as the store knows it: its variants and populations and the hours of
    its `visitors` points in either layer."""

    name: str
    variants: tuple[str, ...]
    populations: tuple[str, ...]
    first_hour: str
    last_hour: str

    @property
    def days_running(self) -> float:
        """From the start of its first hour to the end of its last, in days."""
        span = _moment(self.last_hour) - _moment(self.first_hour) + timedelta(hours=1)
        return span / timedelta(days=1)

    @property
    def control(self) -> str:
        return choose_control(self.variants)


@dataclass(frozen=True)
class Split:
    """Visitors per variant, their shares and the sample-ratio test, and where they come
    from: the latest scorecard, or the live 24-hour rolling visitors."""

    counts: dict[str, float]
    source: str
    p_value: float | None
    flagged: bool
    note: str = ""

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {v: (n / total if total else 0.0) for v, n in self.counts.items()}


class UnknownExperiment(ExpoError):
    """An experiment name the store has no points of."""


class DashboardData:
    """What the store holds for the dashboard, read from the metric store and the scorecards
    on each request.

    The store is opened on first use and kept (an unreachable one is tried again on the next
    request); every read is its own short transaction."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: MetricStore | None = None
        self._lock = threading.Lock()

    @property
    def store_label(self) -> str:
        """The store's URL without its password."""
        import sqlalchemy as sa

        return sa.make_url(self.settings.lake.metric_store).render_as_string(hide_password=True)

    def store(self) -> MetricStore:
        with self._lock:
            if self._store is None:
                self._store = MetricStore(self.settings.lake.metric_store)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- what the store holds -------------------------------------------------------------

    def experiments(self) -> dict[str, Experiment]:
        """Every experiment with `visitors` points, by name."""
        grouped: dict[str, list] = defaultdict(list)
        for span in self.store().key_spans("visitors"):
            if span.experiment:
                grouped[span.experiment].append(span)
        return {
            name: Experiment(
                name,
                tuple(charts.ordered_variants({s.variant for s in spans})),
                tuple(p for p in POPULATIONS if p in {s.population for s in spans})
                + tuple(sorted({s.population for s in spans} - set(POPULATIONS))),
                min(s.first_hour for s in spans),
                max(s.last_hour for s in spans),
            )
            for name, spans in sorted(grouped.items())
        }

    def experiment(self, name: str) -> Experiment:
        found = self.experiments()
        if name not in found:
            known = ", ".join(found) or "none yet"
            raise UnknownExperiment(
                f"the metric store has no experiment named {name!r} (experiments: {known})"
            )
        return found[name]

    def latest_rolling(self, experiment: str | None = None) -> dict[tuple, Point]:
        """The newest rolling-visitors point of every (metric, experiment, variant,
        population), of one experiment or all: one read per distinct newest stamp (usually
        one, the last micro-batch's), however long the store's history."""
        store = self.store()
        newest = {
            (metric, s.experiment, s.variant, s.population): s.last_hour
            for metric in charts.ROLLING_METRICS
            for s in store.key_spans(metric)
            if experiment is None or s.experiment == experiment
        }
        latest: dict[tuple, Point] = {}
        for stamp in sorted(set(newest.values())):
            for p in store.query(
                layer="speed",
                experiment=experiment,
                metrics=charts.ROLLING_METRICS,
                hour_from=stamp,
                hour_to=stamp,
            ):
                key = (p.metric, p.experiment, p.variant, p.population)
                if newest.get(key) == stamp:
                    latest[key] = p
        return latest

    def split(self, exp: Experiment, rolling: dict[tuple, Point]) -> Split | None:
        """The traffic split and sample-ratio test of the assigned population: from the
        latest scorecard (unique visitors over every day analysed), else live from the
        rolling 24-hour visitors."""
        found = latest_scorecard(self.settings, exp.name, "assigned")
        if found:
            day, card = found
            counts = {v: float(d["visitors"]) for v, d in card.get("variants", {}).items()}
            test = card.get("srm") or {}
            return Split(
                counts,
                f"scorecard up to {day.isoformat()}",
                test.get("p_value"),
                bool(test.get("flagged")),
            )
        counts = {
            p.variant: p.value
            for (metric, e, _, population), p in rolling.items()
            if metric == "visitors_rolling_24h" and e == exp.name and population == "assigned"
        }
        if not counts:
            return None
        note = ""
        try:
            result = srm(
                {v: round(n) for v, n in counts.items()},
                self.settings.batch.srm_weights_for(exp.name),
            )
            p_value, flagged = result.p_value, result.flagged
        except ValueError as exc:  # EXPO_SRM_WEIGHTS do not cover the variants seen
            p_value, flagged, note = None, False, str(exc)
        return Split(counts, "live: visitors of the last 24 hours", p_value, flagged, note)
