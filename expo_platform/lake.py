"""The lake: landing-zone files by hour, the columnar tables, the Hive `sessions` table."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from datetime import date, datetime
from pathlib import Path

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform.core.beacons import BEACON_SCHEMA, REJECT_SCHEMA
from expo_platform.core.hours import hour_key
from expo_platform.core.metrics import SKETCHES_SCHEMA
from expo_platform.core.visits import SESSIONS_SCHEMA
from expo_platform.errors import ExpoError
from expo_platform.settings import Settings

log = logging.getLogger(__name__)

LANDING_SUFFIXES = (".json", ".json.gz")
PARTITION_COLUMN = "hourly_partitioner"
TABLE_SCHEMAS = {
    "beacons": BEACON_SCHEMA,
    "beacon_rejects": REJECT_SCHEMA,
    "visitor_sketches": SKETCHES_SCHEMA,
}


def require_lake(settings: Settings) -> None:
    """Fail with one clear line when the lake folder does not exist."""
    if not settings.lake.root.is_dir():
        raise ExpoError(
            f"the lake {settings.lake.root} does not exist: set EXPO_LAKE, or run `expo generate`"
        )


def landing_partition(settings: Settings, hour: datetime) -> Path:
    """The landing folder of an hour."""
    return settings.lake.landing_dir / f"hour={hour_key(hour)}"


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


def table_path(settings: Settings, table: str) -> Path:
    """Root folder of a lake table."""
    return settings.lake.tables_dir / table


def partition_path(settings: Settings, table: str, hour: datetime) -> Path:
    """Folder of one hourly partition of a lake table."""
    return table_path(settings, table) / f"{PARTITION_COLUMN}={hour_key(hour)}"


def write_partition(df: DataFrame, settings: Settings, table: str, hour: datetime) -> None:
    """Replace one hourly partition of a Parquet table with `df` (absolute, re-runnable)."""
    path = partition_path(settings, table, hour)
    df.write.mode("overwrite").parquet(str(path))


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


def read_partitions(
    spark: SparkSession, settings: Settings, table: str, hours: list[datetime]
) -> DataFrame:
    """The rows of the hourly partitions that exist; missing hours contribute nothing."""
    schema = TABLE_SCHEMAS.get(table) or SESSIONS_SCHEMA
    fmt = "orc" if table == "sessions" else "parquet"
    paths = [p for h in hours if (p := partition_path(settings, table, h)).is_dir()]
    return read_folders(spark, paths, schema, fmt)


def day_path(settings: Settings, table: str, day: date) -> Path:
    """Folder of one daily partition of a lake table."""
    return table_path(settings, table) / f"day={day.isoformat()}"


def write_day(df: DataFrame, settings: Settings, table: str, day: date) -> None:
    """Replace one daily partition of a Parquet table with `df` (absolute, re-runnable)."""
    df.write.mode("overwrite").parquet(str(day_path(settings, table, day)))


def read_days(
    spark: SparkSession, settings: Settings, table: str, schema: str, days: list[date]
) -> DataFrame:
    """The rows of the daily partitions that exist; missing days contribute nothing."""
    folders = [day_path(settings, table, d) for d in days]
    return read_folders(spark, [p for p in folders if (p / "_SUCCESS").exists()], schema)


def days_present(settings: Settings, table: str) -> list[date]:
    """The days a daily table has been written for, sorted."""
    root = table_path(settings, table)
    if not root.is_dir():
        return []
    return sorted(
        date.fromisoformat(p.name.removeprefix("day="))
        for p in root.glob("day=*")
        if (p / "_SUCCESS").exists()
    )


def has_partition(settings: Settings, table: str, hour: datetime) -> bool:
    """Whether an hourly partition of a lake table has been written."""
    return (partition_path(settings, table, hour) / "_SUCCESS").exists()


def sessions_table(settings: Settings) -> str:
    """Qualified name of the Hive sessions table."""
    return f"{settings.lake.hive_database}.sessions"


def ensure_sessions_table(spark: SparkSession, settings: Settings) -> None:
    """Create the Hive external table `sessions` (ORC) over this lake, or re-point it here."""
    location = table_path(settings, "sessions").resolve()
    name = sessions_table(settings)
    try:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {settings.lake.hive_database}")
        if spark.catalog.tableExists(name):
            current = spark.sql(f"DESCRIBE FORMATTED {name}").where("col_name = 'Location'")
            if current.first()["data_type"].removeprefix("file:") == str(location):
                return
            # An external table: dropping it forgets metadata only, never the files.
            spark.sql(f"DROP TABLE {name}")
        columns = SESSIONS_SCHEMA.replace(" string", " STRING")
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
    path = partition_path(settings, "sessions", hour)
    df.write.mode("overwrite").orc(str(path))
    spark.sql(
        f"ALTER TABLE {sessions_table(settings)} ADD IF NOT EXISTS "
        f"PARTITION ({PARTITION_COLUMN}='{hour_key(hour)}') LOCATION '{path.resolve()}'"
    )


def remove_partition(settings: Settings, table: str, hour: datetime) -> None:
    """Delete one hourly partition folder (used to reset a table in tests and tools)."""
    shutil.rmtree(partition_path(settings, table, hour), ignore_errors=True)


def count_rows(df: DataFrame) -> int:
    """Row count of a DataFrame."""
    return df.select(F.count(F.lit(1))).first()[0]


def parquet_rows_by_partition(folder: Path) -> dict[str, int]:
    """Rows per partition value of a folder of `<column>=<value>` Parquet partitions, read
    from the files' footers (no Spark job)."""
    import pyarrow.parquet as pq

    return {
        part.name.split("=", 1)[1]: sum(
            pq.ParquetFile(f).metadata.num_rows for f in part.glob("*.parquet")
        )
        for part in sorted(folder.glob("*=*"))
        if part.is_dir()
    }
