"""The lake: landing-zone files by hour, its tables (`Table`: the registry `TABLES`, and the
speed layer's own under `<lake>/stream`), the Hive `sessions` table."""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform.analysis.pre_period import VISITOR_TOTALS_SCHEMA
from expo_platform.analysis.scorecards import VISITOR_DAILY_SCHEMA
from expo_platform.core.beacons import BEACON_SCHEMA, REJECT_SCHEMA
from expo_platform.core.hours import hour_key, parse_hour
from expo_platform.core.metrics import SKETCHES_SCHEMA
from expo_platform.core.visits import SESSIONS_SCHEMA
from expo_platform.errors import ExpoError
from expo_platform.settings import Settings

log = logging.getLogger(__name__)

LANDING_SUFFIXES = (".json", ".json.gz")
LANDING_COLUMN = "hour"  # landing folders are `hour=YYYY-MM-DD-HH`
PARTITION_COLUMN = "hourly_partitioner"  # of the hourly tables; the Hive partition column
DAY_COLUMN = "day"  # of the daily tables
STAGING = "_staging"  # under the lake: partitions being written, before they are swapped in

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`, which Python's
    standard library lacks); False where the system or file system cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


NO_SPACE = "No space left on device"  # ENOSPC, as Java and the C library word it


def disk_full_message(root: Path, path: Path) -> str:
    """The error of a write that found the lake's disk full: the path and what is free."""
    free = shutil.disk_usage(root).free if root.exists() else 0
    return (
        f"no space left on device writing {path}: the file system of the lake {root} has "
        f"{free:,} bytes free. Free space there (or point EXPO_LAKE at a larger disk) and "
        "run the same hours again: the partitions written so far are whole"
    )


def swap_in(staging: Path, path: Path) -> None:
    """Put the folder `staging` in the place of `path`, then delete what was there. Where
    the system cannot swap atomically, `path` is missing between two renames (never partial)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.rename(staging, path)
        return
    if not _exchange(staging, path):
        old = staging.with_name(staging.name + ".old")
        os.rename(path, old)
        os.rename(staging, path)
        staging = old
    shutil.rmtree(staging)


@dataclass(frozen=True)
class Table:
    """A table of the lake: its name (its folder), the schema and format of its files, and
    the column its partition folders are named by, `<column>=<value>` with the value an
    hour's `hour_key` (or a day's ISO date for a daily table). The speed layer's own tables
    (`stream`) are under `<lake>/stream` rather than `<lake>/tables`."""

    name: str
    schema: str
    format: str = "parquet"
    partition_column: str = PARTITION_COLUMN
    stream: bool = False

    @property
    def daily(self) -> bool:
        return self.partition_column == DAY_COLUMN

    def root(self, settings: Settings) -> Path:
        """The table's folder."""
        return (settings.stream_dir if self.stream else settings.lake.tables_dir) / self.name

    def partition_name(self, when: date) -> str:
        """The folder name of the partition of an hour (of a day, for a daily table)."""
        value = when.isoformat() if self.daily else hour_key(when)  # type: ignore[arg-type]
        return f"{self.partition_column}={value}"

    def partition_in(self, folder: Path, when: date) -> Path:
        """The partition of an hour (or a day) in a folder laid out like the table."""
        return folder / self.partition_name(when)

    def partition_path(self, settings: Settings, when: date) -> Path:
        """The folder of the table's partition of an hour (or a day)."""
        return self.partition_in(self.root(settings), when)

    def partitions_in(self, folder: Path) -> list[Path]:
        """The partition folders in a folder laid out like the table, sorted."""
        return sorted(folder.glob(f"{self.partition_column}=*"))

    @staticmethod
    def partition_value(path: Path) -> str:
        """The value of a partition folder: `2026-03-02-05` of `...=2026-03-02-05`."""
        return path.name.split("=", 1)[1]

    def hours_in(self, folder: Path) -> list[datetime]:
        """The hours of the partition folders in a folder laid out like the table."""
        return [parse_hour(self.partition_value(p)) for p in self.partitions_in(folder)]

    def has_partition(self, settings: Settings, when: date) -> bool:
        """Whether the partition of an hour (or a day) has been written whole (`_SUCCESS`)."""
        return (self.partition_path(settings, when) / "_SUCCESS").exists()

    def read(self, spark: SparkSession, paths: list[Path]) -> DataFrame:
        """The rows of these folders of the table's files; an empty frame for none."""
        return read_folders(spark, paths, self.schema, self.format)

    def read_partitions(
        self, spark: SparkSession, settings: Settings, hours: list[datetime]
    ) -> DataFrame:
        """The rows of the hourly partitions that exist; missing hours contribute nothing."""
        paths = [p for h in hours if (p := self.partition_path(settings, h)).is_dir()]
        return self.read(spark, paths)

    def read_days(self, spark: SparkSession, settings: Settings, days: list[date]) -> DataFrame:
        """The rows of the daily partitions written whole; missing days contribute nothing."""
        paths = [self.partition_path(settings, d) for d in days if self.has_partition(settings, d)]
        return self.read(spark, paths)

    def days_present(self, settings: Settings) -> list[date]:
        """The days a daily table has been written for, sorted."""
        root = self.root(settings)
        if not root.is_dir():
            return []
        return sorted(
            date.fromisoformat(self.partition_value(p))
            for p in self.partitions_in(root)
            if (p / "_SUCCESS").exists()
        )

    def write_partition(self, df: DataFrame, settings: Settings, when: date) -> None:
        """Replace the partition of an hour (or a day) with `df` (absolute, re-runnable).

        Readers never see a partial partition: Spark writes a staging folder beside the lake's
        tables, which then takes the partition's place in one rename (`swap_in`). A run killed
        mid-write leaves the old partition (or none) and a staging folder the next write of
        the partition removes.
        """
        path = self.partition_path(settings, when)
        staging_dir = settings.lake.root / STAGING
        for stale in staging_dir.glob(f"{self.name}.{path.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = staging_dir / f"{self.name}.{path.name}.{uuid.uuid4().hex[:12]}"
        try:
            df.write.format(self.format).save(str(staging))
        except Exception as error:
            shutil.rmtree(staging, ignore_errors=True)
            if NO_SPACE in str(error):
                raise ExpoError(disk_full_message(settings.lake.root, path)) from None
            raise
        swap_in(staging, path)

    def remove_partition(self, settings: Settings, when: date) -> None:
        """Delete the partition folder of an hour (or a day), if there is one."""
        shutil.rmtree(self.partition_path(settings, when), ignore_errors=True)


BEACONS = Table("beacons", BEACON_SCHEMA)
BEACON_REJECTS = Table("beacon_rejects", REJECT_SCHEMA)
SESSIONS = Table("sessions", SESSIONS_SCHEMA, "orc")  # the Hive table `sessions` too
VISITOR_SKETCHES = Table("visitor_sketches", SKETCHES_SCHEMA)
VISITOR_DAILY = Table("visitor_daily", VISITOR_DAILY_SCHEMA, partition_column=DAY_COLUMN)
# Per visitor and day, whatever the experiments: the CUPED covariates' source.
VISITOR_TOTALS = Table("visitor_totals", VISITOR_TOTALS_SCHEMA, partition_column=DAY_COLUMN)
TABLES = {
    t.name: t
    for t in (BEACONS, BEACON_REJECTS, SESSIONS, VISITOR_SKETCHES, VISITOR_DAILY, VISITOR_TOTALS)
}

# The speed layer's state: counted beacons by batch and hour
# (`beacons/batch=<key>/hourly_partitioner=<hour>`), sessions rows and visitor sketches by hour.
STREAM_BEACONS = Table("beacons", BEACON_SCHEMA, stream=True)
STREAM_SESSIONS = Table("sessions", SESSIONS_SCHEMA, stream=True)
STREAM_SKETCHES = Table("sketches", SKETCHES_SCHEMA, stream=True)


def table(name: str) -> Table:
    """The lake table of this name; an unknown name is an error."""
    try:
        return TABLES[name]
    except KeyError:
        known = ", ".join(TABLES)
        raise ExpoError(f"no lake table {name!r}; the lake's tables: {known}") from None


def require_lake(settings: Settings) -> None:
    """Fail with one clear line when the lake folder does not exist."""
    if not settings.lake.root.is_dir():
        raise ExpoError(
            f"the lake {settings.lake.root} does not exist: set EXPO_LAKE, or run `expo generate`"
        )


def landing_partition(settings: Settings, hour: datetime) -> Path:
    """The landing folder of an hour."""
    return settings.lake.landing_dir / f"{LANDING_COLUMN}={hour_key(hour)}"


def landing_files(settings: Settings, hour: datetime) -> list[Path]:
    """The hour's landing files (`*.json`, `*.json.gz`), sorted; none for an empty hour."""
    folder = landing_partition(settings, hour)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(LANDING_SUFFIXES))


def landing_signature(settings: Settings, hour: datetime) -> str:
    """A fingerprint of an hour's landing files (name, size, mtime): it changes with late data."""
    parts = []
    for path in landing_files(settings, hour):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def read_landing(spark: SparkSession, files: list[Path]) -> DataFrame:
    """The lines of the given landing files as a `value` column (gzip read transparently)."""
    if not files:
        return spark.createDataFrame([], "value string")
    return spark.read.text([str(p) for p in files])


def read_folders(
    spark: SparkSession, paths: list[Path] | list[str], schema: str, fmt: str = "parquet"
) -> DataFrame:
    """The rows of the given folders, or an empty frame of `schema` when there are none."""
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).format(fmt).load([str(p) for p in paths])


def union_all(frames: list[DataFrame]) -> DataFrame:
    """The rows of all the frames, matched by column name; `frames` is not empty."""
    return functools.reduce(DataFrame.unionByName, frames)


def write_atomically(path: Path, text: str) -> None:
    """Readers never see half a file: write beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sessions_table(settings: Settings) -> str:
    """Qualified name of the Hive sessions table."""
    return f"{settings.lake.hive_database}.{SESSIONS.name}"


def ensure_sessions_table(spark: SparkSession, settings: Settings) -> None:
    """Create the Hive external table `sessions` (ORC) over this lake, or re-point it here."""
    location = SESSIONS.root(settings).resolve()
    name = sessions_table(settings)
    try:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {settings.lake.hive_database}")
        if spark.catalog.tableExists(name):
            current = spark.sql(f"DESCRIBE FORMATTED {name}").where("col_name = 'Location'")
            if current.first()["data_type"].removeprefix("file:") == str(location):
                return
            # An external table: dropping it forgets metadata only, never the files.
            spark.sql(f"DROP TABLE {name}")
        columns = SESSIONS.schema.replace(" string", " STRING")
        spark.sql(
            f"CREATE EXTERNAL TABLE {name} ({columns}) "
            f"PARTITIONED BY ({PARTITION_COLUMN} STRING) STORED AS ORC LOCATION '{location}'"
        )
        if location.is_dir():
            spark.sql(f"MSCK REPAIR TABLE {name}")
    except AnalysisException as exc:
        raise ExpoError(f"cannot set up Hive table {name}: {exc.getMessage()}") from None
    except Exception as exc:  # py4j errors carry the Derby lock message
        if "Another instance of Derby" in str(exc) or "XSDB6" in str(exc):
            raise ExpoError(
                f"the embedded Hive metastore under {settings.lake.metastore_dir} is in use by "
                "another process (a Dagster run or `expo batch`); wait for it to finish"
            ) from None
        raise


def write_sessions(spark: SparkSession, settings: Settings, df: DataFrame, hour: datetime) -> None:
    """Replace the sessions partition of an hour and register it in the Hive metastore."""
    SESSIONS.write_partition(df, settings, hour)
    path = SESSIONS.partition_path(settings, hour)
    spark.sql(
        f"ALTER TABLE {sessions_table(settings)} ADD IF NOT EXISTS "
        f"PARTITION ({PARTITION_COLUMN}='{hour_key(hour)}') LOCATION '{path.resolve()}'"
    )


def count_rows(df: DataFrame) -> int:
    """Row count of a DataFrame."""
    return df.select(F.count(F.lit(1))).first()[0]


def parquet_rows_by_partition(folder: Path) -> dict[str, int]:
    """Rows per partition value of a folder of `<column>=<value>` Parquet partitions, read
    from the files' footers (no Spark job)."""
    import pyarrow.parquet as pq

    return {
        Table.partition_value(part): sum(
            pq.ParquetFile(f).metadata.num_rows for f in part.glob("*.parquet")
        )
        for part in sorted(folder.glob("*=*"))
        if part.is_dir()
    }
