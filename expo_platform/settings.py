"""Every setting of the platform, in one typed place.

Each default runs on one machine with no services: local Spark, a project-local lake, SQLite.
Each can be overridden by the environment variable named beside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from expo_platform.core.hours import parse_hour
from expo_platform.errors import ExpoError, SettingsError


def _path(text: str) -> Path:
    """A path as given; `load_settings` anchors a relative one at the home folder."""
    return Path(text).expanduser()


def default_home() -> Path:
    """Where relative paths are anchored when EXPO_HOME is unset: the project folder of a
    source checkout (the folder of `pyproject.toml` above this package), else the current
    folder. Every process of the platform then finds the same lake, store and services,
    whatever its working directory."""
    project = Path(__file__).resolve().parent.parent
    return project if (project / "pyproject.toml").is_file() else Path.cwd()


def _anchored(value: Path, home: Path) -> Path:
    return (home / value).resolve()


def _anchored_store(url: str, home: Path) -> str:
    """A SQLite URL with a relative file path, anchored at home like the other paths."""
    prefix = "sqlite:///"
    path = url.removeprefix(prefix)
    if url.startswith(prefix) and path and not path.startswith(("/", ":memory:")):
        return prefix + str(_anchored(Path(path), home))
    return url


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must lie between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def _conf(text: str) -> dict[str, str]:
    """Parse `key=value,key=value` into a dict."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        conf[key.strip()] = value.strip()
    return conf


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


REGION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"


def _region(text: str) -> str:
    if text and not re.fullmatch(REGION_PATTERN, text):
        raise ValueError("must be empty, or up to 32 letters, digits, '-' and '_'")
    return text


def _lease_seconds(text: str) -> int:
    value = int(text)
    # ZooKeeper grants session timeouts of 2 to 20 ticks (tickTime=2000 ms here).
    if not 4 <= value <= 40:
        raise ValueError("must lie between 4 and 40 seconds")
    return value


def _weights(text: str) -> dict[str, float]:
    """Parse `experiment/variant=weight,...` into positive floats."""
    weights = {k: float(v) for k, v in _conf(text).items()}
    if any(w <= 0 for w in weights.values()):
        raise ValueError("weights must be > 0")
    if any(k.count("/") != 1 for k in weights):
        raise ValueError("keys must be experiment/variant")
    return weights


def _hour(text: str) -> datetime:
    try:
        return parse_hour(text)
    except ExpoError as exc:
        raise ValueError(str(exc)) from None


def _store_url(text: str) -> str:
    if not text.startswith(("sqlite:", "postgresql:", "postgresql+")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return text


def _memory(text: str) -> str:
    """A JVM memory size such as `2g` or `1536m`."""
    if not text[:-1].isdigit() or text[-1].lower() not in "mg" or int(text[:-1]) == 0:
        raise ValueError("must be a size such as 2g or 1536m")
    return text


def _setting(env: str, parse: Callable[[str], Any], doc: str, default: str | None = None) -> Any:
    return field(metadata={"env": env, "parse": parse, "doc": doc, "default": default})


# HotSpot leaves methods over 8,000 bytecode bytes to the interpreter. Spark's generated code for
# beacon validation and sessionization is larger: with the JIT allowed to compile it, the
# validation of a 2 M-line hour takes 18 s instead of 36 s. The parallel collector spends less
# of 2 cores than G1 (the default), and a batch hour needs throughput, not short pauses: the
# bench hour's CPU fell by 15%, its wall time by 5% in a new JVM, 16% warm (README, benchmarks).
JVM_OPTIONS = "-XX:-DontCompileHugeMethods -XX:+UseParallelGC"


@dataclass(frozen=True)
class Settings:
    """The platform's settings; build them with `load_settings()`."""

    home: Path = _setting(
        "EXPO_HOME",
        _path,
        "folder that relative paths below are anchored at (unset: the project folder)",
        "<project>",
    )
    lake: Path = _setting("EXPO_LAKE", _path, "root of the lake (landing zone, tables)", "./lake")
    metric_store: str = _setting(
        "EXPO_METRIC_STORE",
        _store_url,
        "SQLAlchemy URL of the metric store",
        "sqlite:///<lake>/metrics.sqlite",
    )
    spark_master: str = _setting("EXPO_SPARK_MASTER", str, "Spark master URL", "local[*]")
    spark_conf: dict[str, str] = _setting(
        "EXPO_SPARK_CONF", _conf, "extra Spark settings, key=value,key=value", ""
    )
    partitions_start: datetime = _setting(
        "EXPO_PARTITIONS_START", _hour, "first hour of the hourly partitions", "2026-01-01T00"
    )
    dagster_home: Path = _setting(
        "DAGSTER_HOME", _path, "Dagster instance folder (runs, schedules)", "./.dagster_home"
    )
    hive_database: str = _setting(
        "EXPO_HIVE_DATABASE", str, "Hive database of the sessions table", "expo"
    )
    max_reject_rate: float = _setting(
        "EXPO_MAX_REJECT_RATE", _fraction, "reject rate above which an hour is blocked", "0.1"
    )
    landing_grace_minutes: int = _setting(
        "EXPO_LANDING_GRACE_MINUTES",
        _positive_int,
        "minutes after an hour ends before its landing data counts as complete",
        "10",
    )
    ingest_every_minutes: int = _setting(
        "EXPO_INGEST_EVERY_MINUTES",
        _positive_int,
        "how often the hourly ingest schedule looks for complete hours not yet ingested "
        "(60: once an hour, at minute EXPO_LANDING_GRACE_MINUTES)",
        "60",
    )
    hourly_schedule: str = _setting(
        "EXPO_HOURLY_SCHEDULE",
        _choice("running", "stopped"),
        "state of the hourly ingest schedule when Dagster first loads it (the UI can change it)",
        "running",
    )
    shuffle_partitions: int = _setting(
        "EXPO_SHUFFLE_PARTITIONS", _positive_int, "spark.sql.shuffle.partitions", "4"
    )
    log_level: str = _setting("EXPO_LOG_LEVEL", str.upper, "log level", "INFO")
    kafka_bootstrap: str = _setting(
        "EXPO_KAFKA_BOOTSTRAP", str, "Kafka bootstrap servers of the speed layer", "127.0.0.1:9092"
    )
    kafka_topic: str = _setting("EXPO_KAFKA_TOPIC", str, "Kafka topic of the beacons", "beacons")
    zookeeper: str = _setting(
        "EXPO_ZOOKEEPER", str, "ZooKeeper hosts that keep the stream's offsets", "127.0.0.1:2181"
    )
    stream_consumer: str = _setting(
        "EXPO_STREAM_CONSUMER", str, "consumer name of the streaming app in ZooKeeper", "expo-speed"
    )
    stream_region: str = _setting(
        "EXPO_STREAM_REGION",
        _region,
        "this streaming app's region for writer fail-over (empty: the only app, no lease); "
        "each region keeps its own state and offsets, only the lease holder writes",
        "",
    )
    writer_lease_seconds: int = _setting(
        "EXPO_WRITER_LEASE_SECONDS",
        _lease_seconds,
        "ZooKeeper session timeout of a region: how long a dead writer keeps the lease (4-40)",
        "10",
    )
    stream_source: str = _setting(
        "EXPO_STREAM_SOURCE",
        _choice("expo_kafka", "kafka"),
        "Kafka reader of the stream: expo_kafka (confluent-kafka) or Spark's built-in kafka",
        "expo_kafka",
    )
    stream_trigger_seconds: int = _setting(
        "EXPO_STREAM_TRIGGER_SECONDS", _positive_int, "micro-batch trigger interval", "60"
    )
    stream_watermark_minutes: int = _setting(
        "EXPO_STREAM_WATERMARK_MINUTES",
        _positive_int,
        "how far behind the newest event time a beacon may arrive and still be counted",
        "10",
    )
    stream_max_offsets: int = _setting(
        "EXPO_STREAM_MAX_OFFSETS",
        _positive_int,
        "most Kafka messages per micro-batch (0: no limit)",
        "0",
    )
    stream_starting_offsets: str = _setting(
        "EXPO_STREAM_STARTING_OFFSETS",
        _choice("earliest", "latest"),
        "where a stream with neither checkpoint nor ZooKeeper offsets starts",
        "earliest",
    )
    stream_ui_port: int = _setting(
        "EXPO_STREAM_UI_PORT", _positive_int, "Spark UI port of the streaming app", "4040"
    )
    kafka_end_offsets: str = _setting(
        "EXPO_KAFKA_END_OFFSETS",
        _choice("watermark", "probe"),
        "how the stream finds a partition's end: the broker's high watermark, or probe "
        "(for the local Tansu broker, whose high watermark lags)",
        "watermark",
    )
    services_dir: Path = _setting(
        "EXPO_SERVICES_DIR",
        _path,
        "data, logs and pid files of the local ZooKeeper and broker",
        "./.services",
    )
    srm_weights: dict[str, float] = _setting(
        "EXPO_SRM_WEIGHTS",
        _weights,
        "expected split for the SRM test, experiment/variant=weight,... (equal if unset)",
        "",
    )
    reconcile_tolerance: float = _setting(
        "EXPO_RECONCILE_TOLERANCE",
        _fraction,
        "largest relative speed-versus-batch drift of a finished hour that passes",
        "0.02",
    )
    speed_stale_minutes: int = _setting(
        "EXPO_SPEED_STALE_MINUTES",
        _positive_int,
        "the speed metrics' freshness check fails when their newest event time is this many "
        "minutes behind the clock",
        "15",
    )
    supervisor_interval_seconds: int = _setting(
        "EXPO_SUPERVISOR_INTERVAL_SECONDS",
        _positive_int,
        "seconds between two ticks of the streaming supervisor sensor",
        "60",
    )
    stuck_task_seconds: int = _setting(
        "EXPO_STUCK_TASK_SECONDS",
        _positive_int,
        "a task of the streaming app running longer than this is stuck",
        "900",
    )
    max_kafka_lag: int = _setting(
        "EXPO_MAX_KAFKA_LAG",
        _positive_int,
        "Kafka messages not yet committed by the stream above which it is unhealthy",
        "5000000",
    )
    slow_ticks: int = _setting(
        "EXPO_SLOW_TICKS",
        _positive_int,
        "supervisor ticks in a row of processing below input rate (or latency above the "
        "trigger) that make the stream unhealthy",
        "3",
    )
    restarts_per_hour: int = _setting(
        "EXPO_RESTARTS_PER_HOUR",
        _positive_int,
        "restarts of the streaming app the supervisor may request per hour; then it only alerts",
        "3",
    )
    alert_smtp: str = _setting(
        "EXPO_ALERT_SMTP", str, "host:port of the SMTP server for alert e-mail (empty: off)", ""
    )
    alert_email_from: str = _setting(
        "EXPO_ALERT_EMAIL_FROM", str, "sender of alert e-mail", "expo@localhost"
    )
    alert_email_to: str = _setting(
        "EXPO_ALERT_EMAIL_TO", str, "comma-separated recipients of alert e-mail", ""
    )
    supervise: str = _setting(
        "EXPO_SUPERVISE",
        _choice("on", "off"),
        "on: the streaming supervisor sensor starts running with Dagster (`make up` sets it)",
        "off",
    )
    up_rate: int = _setting(
        "EXPO_UP_RATE",
        _positive_int,
        "beacons per second of the generator that `make up` runs",
        "200",
    )
    up_backlog_minutes: int = _setting(
        "EXPO_UP_BACKLOG_MINUTES",
        _positive_int,
        "minutes of traffic `make up` sends before going live (0: the previous hour whole)",
        "0",
    )
    stream_launcher: str = _setting(
        "EXPO_STREAM_LAUNCHER",
        _choice("local", "spark-submit"),
        "how the supervisor starts the streaming app: a local background process, or "
        "spark-submit to the standalone master of EXPO_SPARK_MASTER (spark://...)",
        "local",
    )
    spark_master_ui: str = _setting(
        "EXPO_SPARK_MASTER_UI",
        str,
        "host:port of the standalone master's web UI: the supervisor finds the streaming app "
        "in its /json/ (empty: in the driver's UI only)",
        "",
    )
    cluster_master_port: int = _setting(
        "EXPO_CLUSTER_MASTER_PORT",
        _positive_int,
        "port of the standalone master that `make cluster` starts",
        "7077",
    )
    cluster_ui_port: int = _setting(
        "EXPO_CLUSTER_UI_PORT",
        _positive_int,
        "web UI port of that master (its worker's UI is on the next port)",
        "8080",
    )
    cluster_worker_cores: int = _setting(
        "EXPO_CLUSTER_WORKER_CORES", _positive_int, "cores the worker offers", "2"
    )
    cluster_worker_memory: str = _setting(
        "EXPO_CLUSTER_WORKER_MEMORY", _memory, "memory the worker offers to executors", "2g"
    )

    @property
    def landing_dir(self) -> Path:
        """Raw beacons by hour: `<lake>/landing/beacons/hour=YYYY-MM-DD-HH/`."""
        return self.lake / "landing" / "beacons"

    @property
    def tables_dir(self) -> Path:
        """Columnar tables that the batch layer writes."""
        return self.lake / "tables"

    @property
    def metastore_dir(self) -> Path:
        """The embedded Derby metastore of the Hive tables, kept with the lake."""
        return self.lake / "_metastore"

    def srm_weights_for(self, experiment: str) -> dict[str, float] | None:
        """The expected split of one experiment's variants, or None for an equal split."""
        prefix = f"{experiment}/"
        found = {k[len(prefix) :]: w for k, w in self.srm_weights.items() if k.startswith(prefix)}
        return found or None

    @property
    def stream_dir(self) -> Path:
        """The speed layer's own files: checkpoint, counted beacons, sessions, progress."""
        return self.lake / (f"stream-{self.stream_region}" if self.stream_region else "stream")

    @property
    def stream_offsets_consumer(self) -> str:
        """The ZooKeeper consumer of this app's Kafka offsets: one per region."""
        region = self.stream_region
        return f"{self.stream_consumer}-{region}" if region else self.stream_consumer

    @property
    def reports_dir(self) -> Path:
        """Scorecards (JSON) and trend reports (HTML) by day."""
        return self.lake / "reports"

    def spark_config(self) -> dict[str, str]:
        """The Spark configuration every session of the platform starts with."""
        conf = {
            "spark.master": self.spark_master,
            "spark.app.name": "expo",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.sql.catalogImplementation": "hive",
            "spark.sql.warehouse.dir": str(self.lake / "_warehouse"),
            "spark.hadoop.javax.jdo.option.ConnectionURL": (
                f"jdbc:derby:;databaseName={self.metastore_dir / 'metastore_db'};create=true"
            ),
            "spark.driver.extraJavaOptions": (
                f"{JVM_OPTIONS} -Dderby.system.home={self.metastore_dir}"
            ),
            "spark.executor.extraJavaOptions": JVM_OPTIONS,
            "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            # Sessionizing aggregates with collect_set/collect_list over ~2 M keys an hour. The
            # object hash aggregate gives up after 128 keys and sort-spills GBs; a sort then a
            # sort aggregate does the same in a fraction (profile: 26 s -> 4 s of aggregation).
            "spark.sql.execution.useObjectHashAggregateExec": "false",
            "spark.ui.showConsoleProgress": "false",
        }
        conf.update(self.spark_conf)
        return conf


SETTINGS_DOC = [
    (f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in fields(Settings)
]


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from the environment; an invalid value raises `SettingsError`."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "home" and f.name not in overrides and not environ.get("EXPO_HOME"):
            values["home"] = default_home()
            continue
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        env, parse, default = f.metadata["env"], f.metadata["parse"], f.metadata["default"]
        raw = environ.get(env)
        if raw is None or raw == "":
            if f.name == "metric_store":
                continue  # derived from the lake below
            raw = default
        try:
            values[f.name] = parse(raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{env}={raw!r} is not valid: {exc}") from None
    home = values["home"] = Path(values["home"]).expanduser().resolve()
    for f in fields(Settings):
        if f.metadata["parse"] is _path:
            values[f.name] = _anchored(Path(values[f.name]), home)
    if "metric_store" not in values:
        values["metric_store"] = f"sqlite:///{values['lake'] / 'metrics.sqlite'}"
    values["metric_store"] = _anchored_store(values["metric_store"], home)
    return Settings(**values)


def path_env(settings: Settings) -> dict[str, str]:
    """The resolved paths as environment variables, for the processes the platform starts:
    each then uses the same lake, store and folders whatever its working directory."""
    return {
        "EXPO_HOME": str(settings.home),
        "EXPO_LAKE": str(settings.lake),
        "EXPO_METRIC_STORE": settings.metric_store,
        "EXPO_SERVICES_DIR": str(settings.services_dir),
        "DAGSTER_HOME": str(settings.dagster_home),
    }


def resolved_paths(settings: Settings) -> dict[str, str]:
    """The absolute places this process reads and writes, for `expo settings` and `make up`."""
    return {
        "home": str(settings.home),
        "lake": str(settings.lake),
        "landing zone": str(settings.landing_dir),
        "metric store": settings.metric_store,
        "stream checkpoint and state": str(settings.stream_dir),
        "services": str(settings.services_dir),
        "dagster home": str(settings.dagster_home),
    }
