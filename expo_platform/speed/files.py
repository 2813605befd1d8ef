"""Where the speed layer keeps its files (`<lake>/stream`), and the `Progress` each
micro-batch leaves for the next.

Counted beacons (one folder per batch), sessions and visitor sketches (one folder per hour)
older than RETENTION_HOURS are deleted (`StreamFiles.expire`): no state outlives the 24-hour
look-back of `visitors_24h`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.core.hours import hour_key
from expo_platform.lake import STREAM_BEACONS, STREAM_SESSIONS, STREAM_SKETCHES
from expo_platform.settings import Settings

RETENTION_HOURS = 26  # visitors_24h looks back 23 hours; the rolling window 24
PROGRESS_KEPT = 20
MINUTE_MS = 60_000
# A message's event hour (`event_hour_col`), the partition column of the stream's tables.
EVENT_HOUR = STREAM_BEACONS.partition_column


def by_hour(hours: list[datetime], rows_of: Callable[[datetime], DataFrame]) -> DataFrame:
    """The rows of each hour, with the hour in column EVENT_HOUR; `hours` is not empty."""
    return lake.union_all(
        [rows_of(hour).withColumn(EVENT_HOUR, F.lit(hour_key(hour))) for hour in hours]
    )


@dataclass
class Progress:
    """What the stream knows after a batch: newest event time and quality counts per hour."""

    key: str = ""  # "<epoch>-<batch>" of the batch that wrote it
    max_ts: int | None = None  # newest event time: the highest batch 99th percentile so far
    quality: dict[str, dict[str, int]] = field(default_factory=dict)  # hour key -> counts
    no_event_time: int = 0  # messages quarantined without an hour
    messages: int = 0  # messages of this batch (blank ones aside)
    batch_seconds: float = 0.0  # from the batch's start (its Kafka read) to its progress write
    done_ms: int = 0  # when its metrics were in the store (epoch ms)
    # Kafka timestamps (produce time) of its messages at quantiles 0, 0.01 and 0.5: the
    # freshness of its metrics at percentiles 100, 99 and 50 is done_ms minus these.
    produced_ms: list[int] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step (StepTimes)

    def watermark(self, delay_ms: int) -> int | None:
        """Valid beacons with ts below this are late."""
        return None if self.max_ts is None else self.max_ts - delay_ms


class StreamFiles:
    """Where the speed layer keeps its files, all under `<lake>/stream`."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.stream_dir
        self.landing = settings.lake.landing_dir
        self.checkpoint = self.root / "checkpoint"
        self.progress_dir = self.root / "progress"
        self.beacons_dir = STREAM_BEACONS.root(settings)
        self.sessions_dir = STREAM_SESSIONS.root(settings)
        self.sketches_dir = STREAM_SKETCHES.root(settings)
        self.quarantine_dir = self.root / "quarantine"
        self.tmp_dir = self.root / "_tmp"

    def epoch(self) -> int:
        """The epoch of this checkpoint: a new checkpoint starts a new one (batch ids restart)."""
        marker = self.checkpoint / "expo_epoch"
        if marker.exists():
            return int(marker.read_text())
        epochs = [int(p.name.split("-")[0]) for p in self.progress_dir.glob("*.json")]
        epoch = max(epochs, default=-1) + 1
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(epoch))
        return epoch

    def retire_checkpoint(self) -> Path:
        """Move the checkpoint aside (kept for a post-mortem): the next query starts a new
        one, and with it a new epoch. Returns where it went."""
        aside = self.root / "retired-checkpoints" / f"epoch-{self.epoch():04d}-{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        self.checkpoint.rename(aside)
        return aside

    def progress_before(self, key: str) -> Progress:
        """The progress of the newest batch before `key` (empty for the first)."""
        keys = sorted(p.stem for p in self.progress_dir.glob("*.json") if p.stem < key)
        if not keys:
            return Progress()
        data = json.loads((self.progress_dir / f"{keys[-1]}.json").read_text())
        return Progress(**data)

    def write_progress(self, progress: Progress) -> None:
        lake.write_atomically(
            self.progress_dir / f"{progress.key}.json", json.dumps(asdict(progress))
        )

    def counted_folder(self, key: str) -> Path:
        """The counted beacons of batch `key`, partitioned by event hour."""
        return self.beacons_dir / f"batch={key}"

    def batch_folders(self, upto: str, *, inclusive: bool = True) -> list[Path]:
        """Counted-beacon folders of the finished batches up to `upto` (inclusive, or not)."""
        return [
            d
            for d in sorted(self.beacons_dir.glob("batch=*"))
            if (key := d.name.removeprefix("batch=")) <= upto
            and (inclusive or key != upto)
            and (d / "_SUCCESS").exists()
        ]

    def beacon_paths(self, hour: datetime, upto: str, *, inclusive: bool = True) -> list[Path]:
        """Counted-beacon folders of an hour written by batches up to `upto`."""
        folders = self.batch_folders(upto, inclusive=inclusive)
        paths = [STREAM_BEACONS.partition_in(d, hour) for d in folders]
        return [p for p in paths if p.is_dir()]

    def beacons(self, spark: SparkSession, hour: datetime, upto: str) -> DataFrame:
        """The counted beacons of an hour, of the batches up to `upto` (inclusive)."""
        return STREAM_BEACONS.read(spark, self.beacon_paths(hour, upto))

    def session_path(self, hour: datetime) -> Path:
        return STREAM_SESSIONS.partition_in(self.sessions_dir, hour)

    def sessions(self, spark: SparkSession, hours: list[datetime]) -> DataFrame:
        """The sessions rows of these hours (those that have a folder)."""
        paths = [p for h in hours if (p := self.session_path(h)).is_dir()]
        return STREAM_SESSIONS.read(spark, paths)

    def sketch_path(self, hour: datetime) -> Path:
        return STREAM_SKETCHES.partition_in(self.sketches_dir, hour)

    def sketches(self, spark: SparkSession, hours: list[datetime]) -> DataFrame:
        """The visitor sketches of these hours (those that have any), one row per key and hour."""
        paths = [p for h in hours if (p := self.sketch_path(h)).is_dir()]
        return STREAM_SKETCHES.read(spark, paths)

    def hours_with_beacons(self, upto: str) -> list[datetime]:
        """Hours that counted beacons of batches up to `upto` fall in."""
        return sorted({h for d in self.batch_folders(upto) for h in STREAM_BEACONS.hours_in(d)})

    def move_in(self, new: Path, target: Path) -> None:
        """Replace folder `target` by folder `new`; `target` is never left half deleted.

        The old folder is moved aside in one rename before the new one moves in: a crash in
        between leaves no folder, and the replayed batch builds that hour's sessions or
        sketches from all its beacons.
        """
        aside = self.tmp_dir / "replaced"  # one batch at a time replaces folders
        shutil.rmtree(aside, ignore_errors=True)
        if target.is_dir():
            os.replace(target, aside)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)
        shutil.rmtree(aside, ignore_errors=True)

    def expire(self, progress: Progress) -> None:
        """Delete counted beacons, sketches and sessions older than the retention, and the
        quality counts of their hours; keep the last PROGRESS_KEPT progress files."""
        if progress.max_ts is None:
            return
        cutoff = hour_key(
            datetime.fromtimestamp(progress.max_ts / 1000, UTC) - timedelta(hours=RETENTION_HOURS)
        )
        for folder in [
            *(p for d in self.beacons_dir.glob("batch=*") for p in STREAM_BEACONS.partitions_in(d)),
            *STREAM_SESSIONS.partitions_in(self.sessions_dir),
            *STREAM_SKETCHES.partitions_in(self.sketches_dir),
        ]:
            if lake.Table.partition_value(folder) < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        progress.quality = {h: c for h, c in progress.quality.items() if h >= cutoff}
        # A replay needs only the progress before its own batch: keep the last few.
        for old in sorted(self.progress_dir.glob("*.json"))[:-PROGRESS_KEPT]:
            old.unlink(missing_ok=True)
