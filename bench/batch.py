"""Batch figures: one generated hour through the hourly asset graph, and the DuckDB peer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psutil

from bench import duckdb_peer
from expo_platform.core.hours import HOUR_MS, hour_iso, hour_key, hour_start_ms, parse_hour
from expo_platform.core.metrics import ALLOWED_ERROR
from expo_platform.devtools.generator import GeneratorConfig, write_landing
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings

HOUR = parse_hour("2026-03-02T12")
BEACONS_PER_VISITOR = 5.3  # measured on the generator: lines per visitor in a busy hour


def tuning_environ() -> dict[str, str]:
    """Only the environment's Spark tuning (EXPO_SPARK_CONF) reaches a benchmark: its lake,
    store and Dagster home are its own, whatever EXPO_* the shell has."""
    return {k: v for k, v in os.environ.items() if k == "EXPO_SPARK_CONF"}


@dataclass
class BatchInput:
    landing: Path  # hour=H and hour=H+1 folders
    lines: int
    files: list[Path]


def cached_input(cache: Path, beacons: int, seed: int, progress) -> BatchInput:
    """Generated landing files for the benchmark hour, generated once per (beacons, seed)."""
    folder = cache / f"batch-{beacons}-{seed}"
    marker = folder / "input.json"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        visitors = int(beacons / BEACONS_PER_VISITOR)
        progress(f"generating about {beacons:,} beacons ({visitors:,} visitors) into {folder}")
        report = write_landing(
            GeneratorConfig(start=HOUR, hours=1, visitors=visitors, seed=seed, dirty_fraction=0.02),
            folder / "landing",
            progress=lambda line: progress("  " + line),
        )
        # The next hour exists (empty): the hour's metrics are final once it is in.
        (folder / "landing" / f"hour={hour_key(HOUR + timedelta(hours=1))}").mkdir(exist_ok=True)
        marker.write_text(json.dumps({"lines": sum(report.lines_by_hour.values())}))
    files = sorted((folder / "landing").glob("hour=*/*.json"))
    return BatchInput(folder / "landing", json.loads(marker.read_text())["lines"], files)


class PeakMemory:
    """The highest resident memory of this process and its children (the JVM), sampled."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a child that just ended
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SparkRun:
    values: dict  # the store's batch metrics of the hour after the first run
    seconds: float  # the first run, in a new JVM, as every scheduled Dagster run starts
    warm_seconds: float  # the same hour again in that JVM, as `expo batch` runs its next hours
    rerun_values: dict  # the store's metrics after the re-run: writes are absolute values
    peak: int

    def rerun_changes(self) -> list[str]:
        """Keys whose value the re-run changed, added or removed: none, to the last bit, as
        re-running an hour must leave the store as it was."""
        first, again = self.values, self.rerun_values
        return [
            f"{key}: {first.get(key)} -> {again.get(key)}"
            for key in sorted(first.keys() | again.keys())
            if first.get(key) != again.get(key)
        ]


def run_spark(data: BatchInput, progress) -> SparkRun:
    """The hourly asset graph (ingest H and H+1, metrics of H) on a fresh lake and store,
    then the same hours again in the same process."""
    from expo_platform.cli import load_orchestration
    from expo_platform.ops.dagster_home import prepare_dagster_home

    work = Path(tempfile.mkdtemp(prefix="expo-bench-"))
    settings = load_settings(
        {
            **tuning_environ(),
            "EXPO_LAKE": str(work / "lake"),
            "EXPO_METRIC_STORE": f"sqlite:///{work / 'metrics.sqlite'}",
            "DAGSTER_HOME": str(work / "dagster_home"),
        }
    )
    settings.lake.landing_dir.parent.mkdir(parents=True)
    settings.lake.landing_dir.symlink_to(data.landing, target_is_directory=True)
    project, build_defs, run_batch = load_orchestration()
    prepare_dagster_home(settings, project)
    defs = build_defs(settings)

    def timed_run() -> tuple[float, dict]:
        started = time.perf_counter()
        run_batch(defs, HOUR, HOUR, progress=lambda line: progress("  " + line))
        seconds = time.perf_counter() - started
        with MetricStore(settings.lake.metric_store) as store:
            hour = hour_iso(HOUR)
            return seconds, store.values(layer="batch", hour_from=hour, hour_to=hour, by_hour=False)

    try:
        with PeakMemory() as memory:
            seconds, values = timed_run()
            progress(f"batch: first run {seconds:.1f}s; the same hours again, same JVM")
            warm_seconds, rerun_values = timed_run()
        return SparkRun(values, seconds, warm_seconds, rerun_values, memory.peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(spark: dict, peer: dict) -> list[str]:
    """Differences between the two implementations' metrics (empty when they agree)."""
    problems = [f"only in Spark: {k}" for k in sorted(spark.keys() - peer.keys())]
    problems += [f"only in DuckDB: {k}" for k in sorted(peer.keys() - spark.keys())]
    for k in sorted(spark.keys() & peer.keys()):
        allowed = ALLOWED_ERROR.get(k[0], 1e-6)  # visitors_24h: Spark's is a sketch estimate
        if abs(spark[k] - peer[k]) > allowed * max(1.0, abs(peer[k])):
            problems.append(f"{k}: Spark {spark[k]} DuckDB {peer[k]}")
    return problems


def run(cache: Path, beacons: int, seed: int, progress) -> dict:
    """Both implementations on the same files; figures and the cross-check."""
    data = cached_input(cache, beacons, seed, progress)
    progress(f"batch: Spark asset graph over {data.lines:,} lines")
    spark = run_spark(data, progress)
    progress(f"batch: Spark took {spark.seconds:.1f}s, warm {spark.warm_seconds:.1f}s; DuckDB")
    with PeakMemory() as memory:
        peer_values, peer_s = duckdb_peer.hour_metrics(data.files, hour_start_ms(HOUR) // HOUR_MS)
    problems = compare(spark.values, peer_values)
    for line in problems[:20]:
        progress("  MISMATCH " + line)
    changed = spark.rerun_changes()
    for line in changed[:20]:
        progress("  RE-RUN CHANGED " + line)
    return {
        "lines": data.lines,
        "spark_seconds": round(spark.seconds, 2),
        "spark_beacons_per_s": round(data.lines / spark.seconds),
        "spark_peak_rss_mb": round(spark.peak / 2**20),
        "duckdb_seconds": round(peer_s, 2),
        "duckdb_beacons_per_s": round(data.lines / peer_s),
        "duckdb_peak_rss_mb": round(memory.peak / 2**20),
        "spark_over_duckdb": round(spark.seconds / peer_s, 2),
        "spark_warm_seconds": round(spark.warm_seconds, 2),
        "spark_warm_beacons_per_s": round(data.lines / spark.warm_seconds),
        "spark_warm_over_duckdb": round(spark.warm_seconds / peer_s, 2),
        "metrics_compared": len(spark.values),
        "metrics_agree": not problems,
        "mismatches": len(problems),
        "rerun_agrees": not changed,
        "rerun_changes": len(changed),
    }


def when() -> str:
    return datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
