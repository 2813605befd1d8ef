"""Where the batch layer's time goes: each step of an hour, timed on the cached bench input.

.venv/bin/python -m bench.profile_batch [--beacons 2000000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.batch import HOUR, cached_input, tuning_environ
from expo_platform import lake
from expo_platform.batch import steps
from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, ONE_HOUR, hour_start_ms
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings
from expo_platform.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--beacons", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    cache = Path(__file__).resolve().parent / ".cache"
    data = cached_input(cache, args.beacons, args.seed, print)
    work = Path(tempfile.mkdtemp(prefix="expo-profile-"))
    settings = load_settings({**tuning_environ(), "EXPO_LAKE": str(work / "lake")})
    settings.lake.landing_dir.parent.mkdir(parents=True)
    settings.lake.landing_dir.symlink_to(data.landing, target_is_directory=True)
    spark = get_spark(settings)
    timings: list[tuple[str, float]] = []

    def step(name, action):
        started = time.perf_counter()
        result = action()
        timings.append((name, time.perf_counter() - started))
        print(f"{name:<40} {timings[-1][1]:8.1f}s", flush=True)
        return result

    files = lake.landing_files(settings, HOUR)
    index = int(hour_start_ms(HOUR) // HOUR_MS)
    step("read lines (count)", lambda: lake.read_landing(spark, files).count())
    parsed = bc.parse_beacons(bc.drop_blank_lines(lake.read_landing(spark, files)))
    step("parse + validate (count valid)", lambda: parsed.where("reason is null").count())
    classified = bc.classify_hour(lake.read_landing(spark, files), index)
    step("classify incl. dedup (count)", lambda: classified.count())
    step("process_beacons (asset)", lambda: steps.process_beacons(spark, settings, HOUR))
    with MetricStore(settings.lake.metric_store) as store:
        step("write_quality", lambda: steps.write_quality(spark, settings, store, HOUR))
    step("process_sessions", lambda: steps.process_sessions(spark, settings, HOUR))
    step(
        "next hour (beacons+sessions)",
        lambda: (
            steps.process_beacons(spark, settings, HOUR + ONE_HOUR),
            steps.process_sessions(spark, settings, HOUR + ONE_HOUR),
        ),
    )
    with MetricStore(settings.lake.metric_store) as store:
        step("process_metrics", lambda: steps.process_metrics(spark, settings, store, HOUR))
    total = sum(t for name, t in timings[3:])
    print(f"{'asset steps total':<40} {total:8.1f}s  {data.lines / total:,.0f} beacons/s")
    # In production the 23 hours before H hold a day of traffic, which visitors_24h reads:
    # every hourly table's partition of H stands in for them (symbolic links), and the
    # hour's metrics run again.
    for table in [t for t in lake.TABLES.values() if not t.daily]:
        source = table.partition_path(settings, HOUR)
        for back in range(1, 24) if source.is_dir() else ():
            table.partition_path(settings, HOUR - ONE_HOUR * back).symlink_to(source)
    with MetricStore(settings.lake.metric_store) as store:
        step(
            "process_metrics, 23 busy hours before",
            lambda: steps.process_metrics(spark, settings, store, HOUR),
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
