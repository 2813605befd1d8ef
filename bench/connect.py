"""A small hour end to end through `expo batch` (Dagster's runs in one process): in an
embedded Spark started for the run, and as a thin client of a warm Spark Connect server.

The figures are wall seconds of the whole command, start-up included, as a user or the hourly
schedule pays them. Each is the median of `repeats` runs, and the runs alternate between
embedded and server. The server is warmed by one run first, because `make up` keeps it for days.
The stores of both ways must hold the same metrics.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.batch import HOUR, cached_input, tuning_environ
from expo_platform.core.hours import hour_iso
from expo_platform.ops.connect import remote_url, start_connect
from expo_platform.ops.processes import free_port
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings

PROJECT = Path(__file__).resolve().parent.parent


def _lake(work: Path, landing: Path) -> dict[str, str]:
    environ = {
        **tuning_environ(),
        "EXPO_LAKE": str(work / "lake"),
        "EXPO_METRIC_STORE": f"sqlite:///{work / 'metrics.sqlite'}",
        "DAGSTER_HOME": str(work / "dagster_home"),
        "EXPO_SERVICES_DIR": str(work / "services"),
        "EXPO_CONNECT_PORT": str(free_port()),
        "EXPO_CONNECT_UI_PORT": str(free_port()),
    }
    lake = work / "lake"
    lake.mkdir(parents=True)
    (lake / "landing").mkdir()
    (lake / "landing" / "beacons").symlink_to(landing, target_is_directory=True)
    return environ


def _expo_batch(environ: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(environ, PYSPARK_PYTHON=sys.executable)
    hour = HOUR.strftime("%Y-%m-%dT%H")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "expo_platform.cli", "batch", "--from", hour, "--to", hour],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"expo batch failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def _values(environ: dict[str, str]) -> dict:
    with MetricStore(load_settings(environ).lake.metric_store) as store:
        iso = hour_iso(HOUR)
        return store.values(layer="batch", hour_from=iso, hour_to=iso, by_hour=False)


def _differences(embedded: dict, server: dict) -> list[str]:
    """Where the two stores differ: the same code on the same files, so counts must be equal
    and sums of doubles equal but for the order of summation."""
    found = [f"only one way: {k}" for k in sorted(embedded.keys() ^ server.keys())]
    for k in sorted(embedded.keys() & server.keys()):
        if not math.isclose(embedded[k], server[k], rel_tol=1e-12, abs_tol=1e-12):
            found.append(f"{k}: embedded {embedded[k]} server {server[k]}")
    return found


def run(cache: Path, beacons: int, seed: int, progress, repeats: int = 3) -> dict:
    """Median seconds of the small hour through `expo batch`, embedded and on the server."""
    data = cached_input(cache, beacons, seed, progress)
    work = Path(tempfile.mkdtemp(prefix="expo-bench-connect-"))
    embedded = _lake(work / "embedded", data.landing)
    remote = _lake(work / "remote", data.landing)
    settings = load_settings(remote)
    server = start_connect(settings)
    remote["EXPO_SPARK_REMOTE"] = remote_url(server.port)
    try:
        progress(f"connect: server up ({remote['EXPO_SPARK_REMOTE']}); warming it with one run")
        first = _expo_batch(remote)
        times: dict[str, list[float]] = {"embedded": [], "server": []}
        for i in range(repeats):
            for name, environ in (("embedded", embedded), ("server", remote)):
                times[name].append(_expo_batch(environ))
                progress(f"connect: run {i + 1}/{repeats} {name} {times[name][-1]:.1f}s")
        differences = _differences(_values(embedded), _values(remote))
    finally:
        server.stop(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "connect_hour_lines": data.lines,
        "connect_server_first_run_s": round(first, 1),
        "connect_embedded_hour_s": round(statistics.median(times["embedded"]), 1),
        "connect_server_hour_s": round(statistics.median(times["server"]), 1),
        "connect_runs": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "connect_metrics_agree": not differences,
        "connect_differences": differences[:10],
    }
