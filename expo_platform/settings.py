"""Every setting of the platform, in typed sections: lake, batch, spark, stream, supervisor,
alerts and local (the processes `make up` starts on this machine). The sections' dataclasses
are in `expo_platform.setting_sections`; `Settings` puts them together.

Each default is a Python value that runs on one machine with no services: local Spark, a
project-local lake, SQLite. Each can be overridden by the environment variable named beside
it; `load_settings` is the only place that reads them. Secrets are never settings: only the
names of those that are set are kept (`Settings.secrets`), and Dagster reads their values
through `dg.EnvVar` at run time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from expo_platform import setting_values as values
from expo_platform.errors import SettingsError
from expo_platform.setting_sections import (
    SECTIONS,
    AlertsSettings,
    BatchSettings,
    LakeSettings,
    LocalSettings,
    SparkSettings,
    StreamSettings,
    SupervisorSettings,
    _setting,
)


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


# HotSpot leaves methods over 8,000 bytecode bytes to the interpreter. Spark's generated code for
# beacon validation and sessionization is larger: with the JIT allowed to compile it, the
# validation of a 2 M-line hour takes 18 s instead of 36 s. The parallel collector spends less
# of 2 cores than G1 (the default), and a batch hour needs throughput, not short pauses: the
# bench hour's CPU fell by 15%, its wall time by 5% in a new JVM, 16% warm (docs/benchmarks.md).
# Where the local services listen unless a setting says otherwise.
LOOPBACK = "127.0.0.1"
JVM_OPTIONS = "-XX:-DontCompileHugeMethods -XX:+UseParallelGC"

# Environment variables that hold secrets. Their values never enter the settings.
SECRET_VARIABLES = ("EXPO_SMTP_PASSWORD", "EXPO_ALERT_WEBHOOK_URL")


@dataclass(frozen=True)
class Settings:
    """The platform's settings, by section; build them with `load_settings()`."""

    home: Path = _setting(
        "EXPO_HOME",
        Path("."),
        "folder that relative paths below are anchored at (unset: the project folder)",
        values.path,
        shown="<project>",
    )
    log_level: str = _setting("EXPO_LOG_LEVEL", "INFO", "log level", str.upper)
    lake: LakeSettings = field(default_factory=LakeSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    # Names of the SECRET_VARIABLES set in the environment (their values stay there), and
    # EXPO_METRIC_STORE when its URL carries a password.
    secrets: frozenset[str] = frozenset()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, a section's by a mapping:
        `settings.replace(stream={"trigger_seconds": 5}, log_level="DEBUG")`."""
        changed = {
            name: replace(getattr(self, name), **value) if name in SECTIONS else value
            for name, value in changes.items()
        }
        return replace(self, **changed)

    @property
    def stream_dir(self) -> Path:
        """The speed layer's own files: checkpoint, counted beacons, sessions, progress."""
        region = self.stream.region
        return self.lake.root / (f"stream-{region}" if region else "stream")

    def batch_session_config(self) -> dict[str, str]:
        """What a batch-layer session is built from: the Spark Connect server's address when
        EXPO_SPARK_REMOTE is set (the server holds the rest), else `spark_config`."""
        if self.spark.remote:
            return {"spark.remote": self.spark.remote}
        return self.spark_config()

    def spark_config(self) -> dict[str, str]:
        """The Spark configuration every session of the platform starts with."""
        metastore = self.lake.metastore_dir
        conf = {
            "spark.master": self.spark.master,
            "spark.app.name": "expo",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": str(self.spark.shuffle_partitions),
            "spark.sql.catalogImplementation": "hive",
            "spark.sql.warehouse.dir": str(self.lake.root / "_warehouse"),
            "spark.hadoop.javax.jdo.option.ConnectionURL": (
                f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
            ),
            "spark.driver.extraJavaOptions": f"{JVM_OPTIONS} -Dderby.system.home={metastore}",
            "spark.executor.extraJavaOptions": JVM_OPTIONS,
            "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            # Sessionizing aggregates with collect_set/collect_list over ~2 M keys an hour. The
            # object hash aggregate gives up after 128 keys and sort-spills GBs; a sort then a
            # sort aggregate does the same in a fraction (profile: 26 s -> 4 s of aggregation).
            "spark.sql.execution.useObjectHashAggregateExec": "false",
            "spark.ui.showConsoleProgress": "false",
            # The UI shows; it does not stop jobs or stages for whoever reaches it.
            "spark.ui.killEnabled": "false",
        }
        conf.update(self.spark.conf)
        return conf


def _section_fields() -> list[tuple[str, Any]]:
    """(section name or "", field) of every setting, in documentation order."""
    top = [("", f) for f in fields(Settings) if "env" in f.metadata]
    return top + [(name, f) for name, cls in SECTIONS.items() for f in fields(cls)]


def _shown(f: Any) -> str:
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return values.as_text(default)


# (section, variable, default, description) of every setting: `expo settings` and the README.
SETTINGS_DOC = [
    (name, f.metadata["env"], _shown(f), f.metadata["doc"]) for name, f in _section_fields()
]


def _parsed(f: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """{field: value} when the field's variable is set and not empty, else {}."""
    env = f.metadata["env"]
    raw = environ.get(env)
    if raw is None or raw == "":
        return {}
    try:
        return {f.name: f.metadata["parse"](raw)}
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{env}={raw!r} is not valid: {exc}") from None


def _anchor_paths(section: Any, home: Path) -> Any:
    """The section with every relative path made absolute under home."""
    paths = {
        f.name: _anchored(getattr(section, f.name), home)
        for f in fields(section)
        if isinstance(getattr(section, f.name), Path)
    }
    return replace(section, **paths) if paths else section


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `environ` (the process environment when None); an invalid value
    raises `SettingsError`. Relative paths are anchored at EXPO_HOME (unset: `default_home()`)."""
    environ = os.environ if environ is None else environ
    top = {}
    for f in fields(Settings):
        if "env" in f.metadata:
            top.update(_parsed(f, environ))
    home = Path(top.pop("home", default_home())).expanduser().resolve()
    sections = {
        name: _anchor_paths(
            cls(**{k: v for f in fields(cls) for k, v in _parsed(f, environ).items()}), home
        )
        for name, cls in SECTIONS.items()
    }
    lake = sections["lake"]
    store = lake.metric_store or f"sqlite:///{lake.root / 'metrics.sqlite'}"
    sections["lake"] = replace(lake, metric_store=_anchored_store(store, home))
    secrets = {name for name in SECRET_VARIABLES if environ.get(name)}
    if _has_password(sections["lake"].metric_store):
        secrets.add("EXPO_METRIC_STORE")
    return Settings(home=home, **top, **sections, secrets=frozenset(secrets))


def _has_password(url: str) -> bool:
    """Whether a database URL carries a password (`scheme://user:password@host/...`)."""
    _, _, rest = url.partition("://")
    credentials, at, _ = rest.partition("@")
    return bool(at) and ":" in credentials


def settings_environ(settings: Settings) -> dict[str, str]:
    """The variables that give these settings back in another process (no secrets):
    `load_settings(settings_environ(s)) == s` once the secrets' variables are set there too."""
    environ = {"EXPO_HOME": str(settings.home), "EXPO_LOG_LEVEL": settings.log_level}
    for name, f in _section_fields():
        if not name:
            continue
        value = getattr(getattr(settings, name), f.name)
        environ[f.metadata["env"]] = values.as_text(value)
    return environ


def path_env(settings: Settings) -> dict[str, str]:
    """The resolved paths as environment variables, for the processes the platform starts:
    each then uses the same lake, store and folders whatever its working directory."""
    return {
        "EXPO_HOME": str(settings.home),
        "EXPO_LAKE": str(settings.lake.root),
        "EXPO_METRIC_STORE": settings.lake.metric_store,
        "EXPO_SERVICES_DIR": str(settings.local.services_dir),
        "DAGSTER_HOME": str(settings.local.dagster_home),
    }


def resolved_paths(settings: Settings) -> dict[str, str]:
    """The absolute places this process reads and writes, for `expo settings` and `make up`."""
    return {
        "home": str(settings.home),
        "lake": str(settings.lake.root),
        "landing zone": str(settings.lake.landing_dir),
        "metric store": settings.lake.metric_store,
        "stream checkpoint and state": str(settings.stream_dir),
        "services": str(settings.local.services_dir),
        "dagster home": str(settings.local.dagster_home),
    }
