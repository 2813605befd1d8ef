"""The sections of the settings, one dataclass each: lake, batch, spark, stream, supervisor,
alerts and local, with every field's environment variable, default, parser and description
(`_setting`). `expo_platform.settings` puts them together in `Settings` and reads the
environment (`load_settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from expo_platform import setting_values as values


def _setting(
    env: str, default: Any, doc: str, parse: Callable[[str], Any] = str, shown: str | None = None
) -> Any:
    """A field of a settings section: its variable, Python default, parser and description
    (`shown` replaces the default in the documentation when it is derived at load time)."""
    meta = {"env": env, "parse": parse, "doc": doc, "shown": shown}
    if isinstance(default, dict):
        return field(default_factory=lambda: MappingProxyType(dict(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LakeSettings:
    """Where the data lives: the lake's folders, the Hive database and the metric store."""

    root: Path = _setting(
        "EXPO_LAKE", Path("lake"), "root of the lake (landing zone, tables)", values.path
    )
    metric_store: str = _setting(
        "EXPO_METRIC_STORE",
        "",
        "SQLAlchemy URL of the metric store",
        values.store_url,
        shown="sqlite:///<lake>/metrics.sqlite",
    )
    hive_database: str = _setting(
        "EXPO_HIVE_DATABASE", "expo", "Hive database of the sessions table"
    )

    @property
    def landing_dir(self) -> Path:
        """Raw beacons by hour: `<lake>/landing/beacons/hour=YYYY-MM-DD-HH/`."""
        return self.root / "landing" / "beacons"

    @property
    def tables_dir(self) -> Path:
        """Columnar tables that the batch layer writes."""
        return self.root / "tables"

    @property
    def metastore_dir(self) -> Path:
        """The embedded Derby metastore of the Hive tables, kept with the lake."""
        return self.root / "_metastore"

    @property
    def reports_dir(self) -> Path:
        """Scorecards (JSON) and trend reports (HTML) by day."""
        return self.root / "reports"


@dataclass(frozen=True)
class BatchSettings:
    """The batch layer's partitions, schedule and checks, and the analysis' expected splits."""

    partitions_start: datetime = _setting(
        "EXPO_PARTITIONS_START",
        datetime(2026, 1, 1, tzinfo=UTC),
        "first hour of the hourly partitions",
        values.hour,
        shown="2026-01-01T00",
    )
    landing_grace_minutes: int = _setting(
        "EXPO_LANDING_GRACE_MINUTES",
        10,
        "minutes after an hour ends before its landing data counts as complete",
        values.positive_int,
    )
    ingest_every_minutes: int = _setting(
        "EXPO_INGEST_EVERY_MINUTES",
        60,
        "how often the hourly ingest schedule looks for complete hours not yet ingested "
        "(60: once an hour, at minute EXPO_LANDING_GRACE_MINUTES)",
        values.positive_int,
    )
    hourly_schedule: str = _setting(
        "EXPO_HOURLY_SCHEDULE",
        "running",
        "state of the hourly ingest schedule when Dagster first loads it (the UI can change it)",
        values.choice("running", "stopped"),
    )
    max_reject_rate: float = _setting(
        "EXPO_MAX_REJECT_RATE", 0.1, "reject rate above which an hour is blocked", values.fraction
    )
    reconcile_tolerance: float = _setting(
        "EXPO_RECONCILE_TOLERANCE",
        0.02,
        "largest relative speed-versus-batch drift of a finished hour that passes",
        values.fraction,
    )
    srm_weights: Mapping[str, float] = _setting(
        "EXPO_SRM_WEIGHTS",
        {},
        "expected split for the SRM test, experiment/variant=weight,... (equal if unset)",
        values.weights,
    )

    cap_percentile: float = _setting(
        "EXPO_CAP_PERCENTILE",
        0.0,
        "percentile of the pooled per-visitor sums at which the scorecards cap (winsorize) "
        "orders, units and revenue, e.g. 99 (0: no capping)",
        values.percentile,
    )
    cuped_days: int = _setting(
        "EXPO_CUPED_DAYS",
        7,
        "days before a visitor's first exposure whose per-visitor totals are the CUPED "
        "covariate of the scorecards (0: no CUPED)",
        values.positive_int,
    )

    def srm_weights_for(self, experiment: str) -> dict[str, float] | None:
        """The expected split of one experiment's variants, or None for an equal split."""
        prefix = f"{experiment}/"
        found = {k[len(prefix) :]: w for k, w in self.srm_weights.items() if k.startswith(prefix)}
        return found or None


@dataclass(frozen=True)
class SparkSettings:
    """The Spark every job of the platform runs on."""

    master: str = _setting("EXPO_SPARK_MASTER", "local[*]", "Spark master URL")
    conf: Mapping[str, str] = _setting(
        "EXPO_SPARK_CONF", {}, "extra Spark settings, key=value,key=value", values.conf
    )
    shuffle_partitions: int = _setting(
        "EXPO_SHUFFLE_PARTITIONS", 4, "spark.sql.shuffle.partitions", values.positive_int
    )
    remote: str = _setting(
        "EXPO_SPARK_REMOTE",
        "",
        "sc://host:port of the Spark Connect server the batch layer runs on (`make up` starts "
        "one; empty: an embedded session in each process)",
    )
    master_ui: str = _setting(
        "EXPO_SPARK_MASTER_UI",
        "",
        "host:port of the standalone master's web UI: the supervisor finds the streaming app "
        "in its /json/ (empty: in the driver's UI only)",
    )


@dataclass(frozen=True)
class StreamSettings:
    """The speed layer: Kafka, ZooKeeper, the streaming app and how it is started."""

    kafka_bootstrap: str = _setting(
        "EXPO_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers of the speed layer"
    )
    kafka_topic: str = _setting("EXPO_KAFKA_TOPIC", "beacons", "Kafka topic of the beacons")
    zookeeper: str = _setting(
        "EXPO_ZOOKEEPER", "127.0.0.1:2181", "ZooKeeper hosts that keep the stream's offsets"
    )
    consumer: str = _setting(
        "EXPO_STREAM_CONSUMER", "expo-speed", "consumer name of the streaming app in ZooKeeper"
    )
    region: str = _setting(
        "EXPO_STREAM_REGION",
        "",
        "this streaming app's region for writer fail-over (empty: the only app, no lease); "
        "each region keeps its own state and offsets, only the lease holder writes",
        values.region,
    )
    writer_lease_seconds: int = _setting(
        "EXPO_WRITER_LEASE_SECONDS",
        10,
        "ZooKeeper session timeout of a region: how long a dead writer keeps the lease (4-40)",
        values.lease_seconds,
    )
    source: str = _setting(
        "EXPO_STREAM_SOURCE",
        "expo_kafka",
        "Kafka reader of the stream: expo_kafka (confluent-kafka) or Spark's built-in kafka",
        values.choice("expo_kafka", "kafka"),
    )
    trigger_seconds: int = _setting(
        "EXPO_STREAM_TRIGGER_SECONDS", 60, "micro-batch trigger interval", values.positive_int
    )
    watermark_minutes: int = _setting(
        "EXPO_STREAM_WATERMARK_MINUTES",
        10,
        "how far behind the newest event time a beacon may arrive and still be counted",
        values.positive_int,
    )
    max_offsets: int = _setting(
        "EXPO_STREAM_MAX_OFFSETS",
        0,
        "most Kafka messages per micro-batch (0: no limit)",
        values.positive_int,
    )
    starting_offsets: str = _setting(
        "EXPO_STREAM_STARTING_OFFSETS",
        "earliest",
        "where a stream with neither checkpoint nor ZooKeeper offsets starts",
        values.choice("earliest", "latest"),
    )
    ui_port: int = _setting(
        "EXPO_STREAM_UI_PORT", 4040, "Spark UI port of the streaming app", values.positive_int
    )
    kafka_end_offsets: str = _setting(
        "EXPO_KAFKA_END_OFFSETS",
        "watermark",
        "how the stream finds a partition's end: the broker's high watermark, or probe "
        "(for the local Tansu broker, whose high watermark lags)",
        values.choice("watermark", "probe"),
    )
    launcher: str = _setting(
        "EXPO_STREAM_LAUNCHER",
        "local",
        "how the supervisor starts the streaming app: a local background process, or "
        "spark-submit to the standalone master of EXPO_SPARK_MASTER (spark://...)",
        values.choice("local", "spark-submit"),
    )
    on_broker_reset: str = _setting(
        "EXPO_STREAM_ON_BROKER_RESET",
        "fail",
        "when the broker ends before the stream's committed offsets (its data lost, e.g. a "
        "restarted in-memory broker): `fail` stops the app with the offsets in the error; "
        "`new-epoch` (what `make up` sets) logs it, puts the checkpoint aside, and reads the "
        "broker from its start in a new epoch, keeping the landed beacons and the store",
        values.choice("fail", "new-epoch"),
    )

    @property
    def offsets_consumer(self) -> str:
        """The ZooKeeper consumer of this app's Kafka offsets: one per region."""
        return f"{self.consumer}-{self.region}" if self.region else self.consumer


@dataclass(frozen=True)
class SupervisorSettings:
    """The Dagster sensor that watches the streaming app through its Spark UI."""

    supervise: str = _setting(
        "EXPO_SUPERVISE",
        "off",
        "on: the streaming supervisor sensor starts running with Dagster (`make up` sets it)",
        values.choice("on", "off"),
    )
    interval_seconds: int = _setting(
        "EXPO_SUPERVISOR_INTERVAL_SECONDS",
        60,
        "seconds between two ticks of the streaming supervisor sensor",
        values.positive_int,
    )
    stuck_task_seconds: int = _setting(
        "EXPO_STUCK_TASK_SECONDS",
        900,
        "a task of the streaming app running longer than this is stuck",
        values.positive_int,
    )
    max_kafka_lag: int = _setting(
        "EXPO_MAX_KAFKA_LAG",
        5_000_000,
        "Kafka messages not yet committed by the stream above which it is unhealthy",
        values.positive_int,
    )
    slow_ticks: int = _setting(
        "EXPO_SLOW_TICKS",
        3,
        "supervisor ticks in a row of processing below input rate (or latency above the "
        "trigger) that make the stream unhealthy",
        values.positive_int,
    )
    restarts_per_hour: int = _setting(
        "EXPO_RESTARTS_PER_HOUR",
        3,
        "restarts of the streaming app the supervisor may request per hour; then it only alerts",
        values.positive_int,
    )
    speed_stale_minutes: int = _setting(
        "EXPO_SPEED_STALE_MINUTES",
        15,
        "the speed metrics' freshness check fails when their newest event time is this many "
        "minutes behind the clock",
        values.positive_int,
    )


@dataclass(frozen=True)
class AlertsSettings:
    """Where alerts go. The SMTP password (EXPO_SMTP_PASSWORD) and the webhook URL
    (EXPO_ALERT_WEBHOOK_URL) are secrets, read by Dagster from the environment at run time."""

    smtp: str = _setting(
        "EXPO_ALERT_SMTP", "", "host:port of the SMTP server for alert e-mail (empty: off)"
    )
    email_from: str = _setting("EXPO_ALERT_EMAIL_FROM", "expo@localhost", "sender of alert e-mail")
    email_to: str = _setting(
        "EXPO_ALERT_EMAIL_TO", "", "comma-separated recipients of alert e-mail"
    )
    smtp_user: str = _setting(
        "EXPO_SMTP_USER", "", "SMTP login of alert e-mail (its password: EXPO_SMTP_PASSWORD)"
    )


@dataclass(frozen=True)
class LocalSettings:
    """The processes `make up`, `make services` and `make cluster` start on this machine."""

    services_dir: Path = _setting(
        "EXPO_SERVICES_DIR",
        Path(".services"),
        "data, logs and pid files of the local ZooKeeper and broker",
        values.path,
    )
    dagster_home: Path = _setting(
        "DAGSTER_HOME",
        Path(".dagster_home"),
        "Dagster instance folder (runs, schedules)",
        values.path,
    )
    up_rate: int = _setting(
        "EXPO_UP_RATE",
        200,
        "beacons per second of the generator that `make up` runs",
        values.positive_int,
    )
    up_backlog_minutes: int = _setting(
        "EXPO_UP_BACKLOG_MINUTES",
        0,
        "minutes of traffic `make up` sends before going live (0: the previous hour whole)",
        values.positive_int,
    )
    cluster_master_port: int = _setting(
        "EXPO_CLUSTER_MASTER_PORT",
        7077,
        "port of the standalone master that `make cluster` starts",
        values.positive_int,
    )
    cluster_ui_port: int = _setting(
        "EXPO_CLUSTER_UI_PORT",
        8080,
        "web UI port of that master (its worker's UI is on the next port)",
        values.positive_int,
    )
    cluster_worker_cores: int = _setting(
        "EXPO_CLUSTER_WORKER_CORES", 2, "cores the worker offers", values.positive_int
    )
    cluster_worker_memory: str = _setting(
        "EXPO_CLUSTER_WORKER_MEMORY", "2g", "memory the worker offers to executors", values.memory
    )
    connect_port: int = _setting(
        "EXPO_CONNECT_PORT",
        15002,
        "port of the Spark Connect server that `make up` starts for the batch layer",
        values.positive_int,
    )
    connect_ui_port: int = _setting(
        "EXPO_CONNECT_UI_PORT", 4050, "Spark UI port of that server", values.positive_int
    )
    dashboard_port: int = _setting(
        "EXPO_DASHBOARD_PORT",
        8050,
        "port of the experimenters' dashboard (`expo dashboard`), on loopback",
        values.positive_int,
    )
    dashboard_refresh_seconds: int = _setting(
        "EXPO_DASHBOARD_REFRESH_SECONDS",
        10,
        "seconds between two polls of an open dashboard page for new points",
        values.positive_int,
    )


SECTIONS = {
    "lake": LakeSettings,
    "batch": BatchSettings,
    "spark": SparkSettings,
    "stream": StreamSettings,
    "supervisor": SupervisorSettings,
    "alerts": AlertsSettings,
    "local": LocalSettings,
}
