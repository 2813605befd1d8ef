"""The metric store: points keyed by (metric, experiment, variant, population, hour, layer).

One interface over SQLAlchemy Core, two backends: SQLite (the embedded default, in WAL mode
so a streaming and a batch writer can share the file) and PostgreSQL. Every write is an
absolute value, never an increment, so replays and re-runs are idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from expo_platform.errors import StoreError

LAYERS = ("speed", "batch")
KEY_COLUMNS = ("metric", "experiment", "variant", "population", "hour", "layer")
CHUNK = 5_000

_metadata = sa.MetaData()
points_table = sa.Table(
    "metric_points",
    _metadata,
    *(sa.Column(name, sa.String(200), primary_key=True) for name in KEY_COLUMNS),
    sa.Column("value", sa.Float(precision=53), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Batch where it exists, else speed: what users read.
MERGED_VIEW = """
CREATE VIEW IF NOT EXISTS metric_points_merged AS
SELECT p.metric, p.experiment, p.variant, p.population, p.hour, p.layer, p.value
FROM metric_points p
WHERE p.layer = 'batch'
   OR NOT EXISTS (
       SELECT 1 FROM metric_points b
       WHERE b.layer = 'batch' AND b.metric = p.metric AND b.experiment = p.experiment
         AND b.variant = p.variant AND b.population = p.population AND b.hour = p.hour)
"""


@dataclass(frozen=True)
class Point:
    """One stored value (METRICS.md section 6); experiment, variant, population are '' for
    data-quality metrics."""

    metric: str
    experiment: str
    variant: str
    population: str
    hour: str  # ISO-8601 UTC, e.g. 2026-03-02T05:00:00Z; sorts as time
    layer: str
    value: float


@dataclass(frozen=True)
class KeySpan:
    """A key with points of one metric in the store, and the hours it spans: an experiment's
    variant and population and how long it has run (data-quality points have the key
    ('', '', ''))."""

    experiment: str
    variant: str
    population: str
    first_hour: str
    last_hour: str


def _validate(points: Iterable[Point]) -> list[Point]:
    checked = list(points)
    for p in checked:
        if p.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, not {p.layer!r}: {p}")
        if not math.isfinite(p.value):
            raise ValueError(f"value must be a finite number: {p}")
    return checked


def _chunks(rows: list[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver for plain postgresql:// URLs."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class MetricStore:
    """Reads and writes points in SQLite or PostgreSQL."""

    def __init__(self, url: str, *, connect_timeout_s: float = 10) -> None:
        self.url = sa.make_url(normalize_url(url))
        self.safe_url = self.url.render_as_string(hide_password=True)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database and database != ":memory:":
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"metric store {self.safe_url}: {exc.strerror}") from None
            self.engine = sa.create_engine(
                self.url, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.dialect == "postgresql":
            self.engine = sa.create_engine(
                self.url,
                connect_args={"connect_timeout": int(connect_timeout_s)},
                pool_pre_ping=True,
            )
        else:
            raise StoreError(f"metric store {self.safe_url}: only sqlite and postgresql work")
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._call(self._create_schema)

    def __enter__(self) -> MetricStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def _call(self, action, *args):
        """Run a database action; failures become one-line StoreErrors."""
        try:
            return action(*args)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StoreError(f"metric store {self.safe_url} is unreachable: {reason}") from None

    def _create_schema(self) -> None:
        with self.engine.begin() as conn:
            _metadata.create_all(conn, checkfirst=True)
            if self.dialect == "postgresql":
                # Two processes may start at once: serialize the view creation.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7231)"))
                conn.execute(
                    sa.text(
                        MERGED_VIEW.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
                    )
                )
            else:
                conn.execute(sa.text(MERGED_VIEW))

    def _upsert_rows(self, conn: sa.Connection, points: list[Point]) -> int:
        now = datetime.now(UTC)
        rows = [
            dict(zip((*KEY_COLUMNS, "value"), _row(p), strict=True)) | {"updated_at": now}
            for p in points
        ]
        for chunk in _chunks(rows):
            statement = self._insert(points_table)
            statement = statement.on_conflict_do_update(
                index_elements=list(KEY_COLUMNS),
                set_={
                    "value": statement.excluded.value,
                    "updated_at": statement.excluded.updated_at,
                },
            )
            conn.execute(statement, chunk)
        return len(rows)

    def upsert(self, points: Iterable[Point]) -> int:
        """Insert or overwrite points (absolute values); returns the rows written."""
        checked = _validate(points)

        def write() -> int:
            with self.engine.begin() as conn:
                return self._upsert_rows(conn, checked)

        return self._call(write)

    def replace(
        self,
        points: Iterable[Point],
        *,
        layer: str,
        hours: Sequence[str],
        metrics: Sequence[str],
    ) -> int:
        """In one transaction, drop the layer's points of these hours and metrics, then write.

        The batch layer uses it so that a key gone on a re-run leaves no stale point.
        """
        checked = _validate(points)
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")

        def write() -> int:
            with self.engine.begin() as conn:
                conn.execute(
                    points_table.delete().where(
                        points_table.c.layer == layer,
                        points_table.c.hour.in_(list(hours)),
                        points_table.c.metric.in_(list(metrics)),
                    )
                )
                return self._upsert_rows(conn, checked)

        return self._call(write)

    def query(
        self,
        *,
        layer: str = "merged",
        experiment: str | None = None,
        metrics: Sequence[str] | None = None,
        hour_from: str | None = None,
        hour_to: str | None = None,
        quality: bool | None = False,
    ) -> list[Point]:
        """Points of a layer ('batch', 'speed' or 'merged'), filtered and sorted by key:
        experiment points, or data-quality points (`quality=True`), or both (`None`)."""
        if layer not in (*LAYERS, "merged"):
            raise ValueError(f"layer must be batch, speed or merged, not {layer!r}")
        source = (
            sa.table("metric_points_merged", *(sa.column(c) for c in (*KEY_COLUMNS, "value")))
            if layer == "merged"
            else points_table
        )
        c = source.c
        conditions = []
        if quality is not None:
            conditions.append(c.experiment == "" if quality else c.experiment != "")
        if layer != "merged":
            conditions.append(c.layer == layer)
        if experiment is not None:
            conditions.append(c.experiment == experiment)
        if metrics is not None:
            conditions.append(c.metric.in_(list(metrics)))
        if hour_from is not None:
            conditions.append(c.hour >= hour_from)
        if hour_to is not None:
            conditions.append(c.hour <= hour_to)
        statement = (
            sa.select(*(c[name] for name in (*KEY_COLUMNS, "value")))
            .where(*conditions)
            .order_by(c.metric, c.experiment, c.variant, c.population, c.hour)
        )

        def read() -> list[Point]:
            with self.engine.connect() as conn:
                return [Point(*row) for row in conn.execute(statement)]

        return self._call(read)

    def key_spans(self, metric: str = "visitors") -> list[KeySpan]:
        """Every key with points of `metric` in either layer, with its first and last hour,
        sorted: `visitors` gives the experiments, their variants and populations,
        `beacons_total` the hours of data quality, `visitors_rolling_1h` the newest minute
        stamp of the rolling visitors. One short read; the primary key leads with the metric."""
        c = points_table.c
        statement = (
            sa.select(
                c.experiment, c.variant, c.population, sa.func.min(c.hour), sa.func.max(c.hour)
            )
            .where(c.metric == metric)
            .group_by(c.experiment, c.variant, c.population)
            .order_by(c.experiment, c.variant, c.population)
        )

        def read() -> list[KeySpan]:
            with self.engine.connect() as conn:
                return [KeySpan(*row) for row in conn.execute(statement)]

        return self._call(read)

    def values(
        self,
        *,
        layer: str,
        hour_from: str | None = None,
        hour_to: str | None = None,
        quality: bool | None = False,
        by_hour: bool = True,
    ) -> dict[tuple, float]:
        """A layer's values keyed by (metric, experiment, variant, population, hour), for
        comparing stores. `quality=None` gives experiment and data-quality points together;
        `by_hour=False` leaves the hour out of the key (one hour's points only)."""
        found = self.query(layer=layer, hour_from=hour_from, hour_to=hour_to, quality=quality)
        if not by_hour and len({p.hour for p in found}) > 1:
            raise ValueError("by_hour=False needs the points of one hour")
        width = 5 if by_hour else 4  # Point's fields start with the key
        return {astuple(p)[:width]: p.value for p in found}


def _row(p: Point) -> tuple:
    metric, experiment, variant, population, hour, layer, value = astuple(p)
    return (metric, experiment, variant, population, hour, layer, float(value))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets one writer and many readers share the file; waits instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def wide_points(rows: list, metrics: Sequence[str], hour: str, layer: str) -> list[Point]:
    """Store points of wide rows (one column per metric, e.g. `hourly_metrics` collected),
    one per key and metric."""
    return [
        Point(m, r["experiment"], r["variant"], r["population"], hour, layer, float(r[m]))
        for r in rows
        for m in metrics
    ]


def quality_points(
    counts: Mapping[str, int], metrics: Sequence[str], hour: str, layer: str
) -> list[Point]:
    """Store points of an hour's data-quality counts (`beacons.quality_counts`), one per
    metric, without an experiment key; a metric missing from `counts` is 0."""
    return [Point(m, "", "", "", hour, layer, float(counts.get(m, 0))) for m in metrics]
