"""Where a micro-batch's time goes: the speed layer's steps, timed on the cached bench input.

.venv/bin/python -m bench.profile_stream [--messages 1800000] [--batch 600000] [--one-hour]

The messages go into a fresh topic first; then the streaming app runs in this process until
it is idle, taking at most `--batch` messages per micro-batch (600,000 is one 60-second
trigger at 10,000 beacons/s). Each batch's step times come from its progress file
(`Progress.steps`, written by `MicroBatch`).

The default input is the stream benchmark's: a busy day in time order, so each batch spans
about two hours of event time. `--one-hour` sends the batch benchmark's hour instead (2 M
beacons, 2% dirty): every batch falls in the same hour, as at the end of a busy hour in
production, and shows how the steps grow with the beacons the hour already holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.batch import cached_input, tuning_environ
from bench.stream import cached_lines, produce_paced
from expo_platform.ops import processes, zookeeper_broker
from expo_platform.settings import load_settings
from expo_platform.speed.app import run_stream
from expo_platform.speed.files import StreamFiles


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_800_000)
    parser.add_argument("--batch", type=int, default=600_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--one-hour", action="store_true", help="the batch benchmark's hour")
    args = parser.parse_args()
    cache = Path(__file__).resolve().parent / ".cache"
    if args.one_hour:
        hour = cached_input(cache, 2_000_000, args.seed, print)
        lines = [line for f in hour.files for line in f.read_text().splitlines()]
        lines = lines[: args.messages]
    else:
        lines = cached_lines(cache, args.messages, args.seed, print)
    work = Path(tempfile.mkdtemp(prefix="expo-profile-stream-"))
    zk = zookeeper_broker.start_zookeeper(work / "zookeeper", processes.free_port())
    broker = zookeeper_broker.start_broker(work / "broker", processes.free_port())
    try:
        topic = "profile"
        zookeeper_broker.ensure_topic(broker.address, topic, 2)
        started = time.monotonic()
        sent = produce_paced(broker.address, topic, lines, len(lines), 1)
        print(f"produced {sent:,} messages in {time.monotonic() - started:.1f}s", flush=True)
        environ = tuning_environ() | {
            "EXPO_KAFKA_BOOTSTRAP": broker.address,
            "EXPO_KAFKA_TOPIC": topic,
            "EXPO_ZOOKEEPER": zk.address,
            "EXPO_STREAM_STARTING_OFFSETS": "earliest",
            "EXPO_STREAM_MAX_OFFSETS": str(args.batch),
            "EXPO_KAFKA_END_OFFSETS": "probe",  # see bench/stream.py
            "EXPO_STREAM_UI_PORT": str(processes.free_port()),
        }
        environ["EXPO_LAKE"] = str(work / "lake")
        environ["EXPO_METRIC_STORE"] = f"sqlite:///{work / 'metrics.sqlite'}"
        settings = load_settings(environ)
        run_stream(settings, until_idle=True)
        report(StreamFiles(settings).progress_dir)
    finally:
        broker.stop()
        zk.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(progress_dir: Path) -> None:
    """One column per micro-batch with messages, one row per step, in seconds."""
    batches = [json.loads(p.read_text()) for p in sorted(progress_dir.glob("*.json"))]
    batches = [b for b in batches if b.get("messages")]
    names = list(dict.fromkeys(name for b in batches for name in b.get("steps", {})))
    out = sys.stdout
    out.write(f"{'step':<16}" + "".join(f"{b['key']:>16}" for b in batches) + "\n")
    out.write(f"{'messages':<16}" + "".join(f"{b['messages']:>16,}" for b in batches) + "\n")
    for name in names:
        row = "".join(f"{b['steps'].get(name, 0.0):>16.1f}" for b in batches)
        out.write(f"{name:<16}{row}\n")
    out.write(f"{'batch total':<16}" + "".join(f"{b['batch_seconds']:>16.1f}" for b in batches))
    out.write("\n")


if __name__ == "__main__":
    main()
