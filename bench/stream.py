"""Streaming figures: step the input rate against `expo stream` with a 60-second trigger.

For every rate: a fresh topic and lake, the real app as a child process, and a paced
producer of cached generated lines for `step_seconds`. A rate is sustained when every
micro-batch finished within the trigger interval and the app caught up with the topic.
Freshness is the time from a message's Kafka timestamp (produce time) to the end of the
micro-batch that wrote its metrics, read from the app's progress files.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from expo_platform.core.hours import parse_hour
from expo_platform.core.visits import VISIT_GAP_MS
from expo_platform.devtools.generator import GeneratorConfig, iter_lines
from expo_platform.errors import ExpoError
from expo_platform.lake import STREAM_SESSIONS
from expo_platform.ops import processes, zookeeper_broker

START = parse_hour("2026-03-02T08")


def cached_lines(cache: Path, count: int, seed: int, progress) -> list[str]:
    """`count` generated lines in time order (a busy day), generated once.

    A day of the generator gives about 2.7 lines per visitor; it is asked for twice the
    visitors needed, and a cache file with fewer lines than `count` is generated again, so
    every rate step has input for its whole duration.
    """
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"stream-{count}-{seed}.txt"
    if path.exists():
        lines = path.read_text().splitlines()
        if len(lines) >= count:
            return lines[:count]
        progress(f"{path} holds {len(lines):,} lines, fewer than {count:,}: generating again")
    progress(f"generating {count:,} lines into {path}")
    config = GeneratorConfig(start=START, hours=24, visitors=max(1000, count // 2), seed=seed)
    lines = list(itertools.islice((line for _, line, _ in iter_lines(config)), count))
    if len(lines) < count:
        raise ExpoError(f"the generator gave {len(lines):,} lines, fewer than {count:,}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return lines


def produce_paced(bootstrap: str, topic: str, lines: list[str], rate: int, seconds: int) -> int:
    """Send lines at `rate` per second (in 50 ms slices) for `seconds`; returns how many."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000}
    )
    started, sent = time.monotonic(), 0
    total = min(len(lines), rate * seconds)
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + rate // 20)
        while sent < due:
            try:
                producer.produce(topic, lines[sent].encode())
                sent += 1
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        time.sleep(0.05)
    producer.flush(60)
    return sent


def _batches(lake: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted((lake / "stream" / "progress").glob("*.json"))
    ]


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def state_per_visit(lake: Path) -> tuple[int, int]:
    """(bytes of the stream's state, open visits at the end): visit rows and counted beacons
    (and a state store in the checkpoint, which the app has no longer kept since 2026-12-07)."""
    import pyarrow.parquet as pq

    sessions = lake / "stream" / "sessions"
    newest = max(STREAM_SESSIONS.partitions_in(sessions), default=None)
    if newest is None:
        return 0, 0
    last_ts = pq.read_table(newest, columns=["last_ts"]).column("last_ts").to_pylist()
    since = max(last_ts, default=0) - VISIT_GAP_MS  # once: not once per row
    active = sum(1 for ts in last_ts if ts >= since)
    state = (
        _du(lake / "stream" / "checkpoint" / "state")
        + _du(sessions)
        + _du(lake / "stream" / "beacons")
    )
    return state, active


def app_environ(work: Path, bootstrap: str, topic: str, zookeeper: str, trigger: int) -> dict:
    """The environment of a benchmark's `expo stream`: its own lake, store, topic and
    services, whatever EXPO_* the shell has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")} | {
        "EXPO_HOME": str(work),
        "EXPO_LAKE": str(work / "lake"),
        "EXPO_METRIC_STORE": f"sqlite:///{work / 'metrics.sqlite'}",
        "EXPO_KAFKA_BOOTSTRAP": bootstrap,
        "EXPO_KAFKA_TOPIC": topic,
        "EXPO_ZOOKEEPER": zookeeper,
        "EXPO_STREAM_TRIGGER_SECONDS": str(trigger),
        "EXPO_STREAM_STARTING_OFFSETS": "earliest",
        "EXPO_STREAM_UI_PORT": str(processes.free_port()),
        # The local Tansu broker hides a partition's newest record batch from offset
        # queries (docs/architecture.md); the probe finds it, as a real Kafka needs no help.
        "EXPO_KAFKA_END_OFFSETS": "probe",
        "PYSPARK_PYTHON": sys.executable,
    }


def one_rate(
    rate: int, lines: list[str], step_seconds: int, trigger: int, services_dir: Path, progress
) -> dict:
    """Run the app against `rate` messages/s; its batches, freshness and state size."""
    work = Path(tempfile.mkdtemp(prefix=f"expo-bench-stream-{rate}-"))
    zk = zookeeper_broker.start_zookeeper(services_dir / "zookeeper", processes.free_port())
    broker = zookeeper_broker.start_broker(services_dir / "broker", processes.free_port())
    topic = f"bench-{rate}"
    try:
        zookeeper_broker.ensure_topic(broker.address, topic, 2)
        env = app_environ(work, broker.address, topic, zk.address, trigger)
        log = (work / "stream.log").open("w")
        expo = Path(sys.executable).parent / "expo"
        app = subprocess.Popen([str(expo), "stream"], env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(20)  # the first trigger fires once Spark is up
        progress(f"stream: {rate:,}/s for {step_seconds}s (trigger {trigger}s)")
        sent = produce_paced(broker.address, topic, lines, rate, step_seconds)
        # Let the app take what is left: two more triggers.
        deadline = time.monotonic() + 3 * trigger
        while time.monotonic() < deadline:
            done = sum(b.get("messages", 0) for b in _batches(work / "lake"))
            if done >= sent:
                break
            time.sleep(5)
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=300)
        log.close()
        batches = [b for b in _batches(work / "lake") if b.get("messages")]
        consumed = sum(b["messages"] for b in batches)
        seconds = [b["batch_seconds"] for b in batches]
        fresh50 = [b["done_ms"] - b["produced_ms"][2] for b in batches]
        fresh99 = [b["done_ms"] - b["produced_ms"][1] for b in batches]
        state, active = state_per_visit(work / "lake")
        result = {
            "rate": rate,
            "sent": sent,
            "consumed": consumed,
            "batches": len(batches),
            "max_batch_s": round(max(seconds, default=0), 1),
            "freshness_p50_s": round(sorted(fresh50)[len(fresh50) // 2] / 1000, 1)
            if fresh50
            else None,
            "freshness_p99_s": round(max(fresh99) / 1000, 1) if fresh99 else None,
            "state_bytes_per_active_visit": round(state / active) if active else None,
        }
        # Sustained: the whole step's input was produced, consumed, and no batch overran.
        result["sustained"] = bool(
            batches
            and sent >= rate * step_seconds
            and consumed >= sent
            and result["max_batch_s"] < trigger
        )
        progress(f"  {result}")
        return result
    finally:
        broker.stop()
        zk.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(rates: list[int], step_seconds: int, trigger: int, seed: int, progress) -> dict:
    """Step through the rates (stopping at the first one not sustained)."""
    cache = Path(__file__).resolve().parent / ".cache"
    lines = cached_lines(cache, max(rates) * step_seconds, seed, progress)
    services_dir = Path(tempfile.mkdtemp(prefix="expo-bench-services-"))
    steps = []
    try:
        for rate in rates:
            steps.append(one_rate(rate, lines, step_seconds, trigger, services_dir, progress))
            if not steps[-1]["sustained"]:
                break
    finally:
        shutil.rmtree(services_dir, ignore_errors=True)
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["rate"], default=None)
    return {
        "sustained_beacons_per_s": best["rate"] if best else 0,
        "freshness_p50_s": best["freshness_p50_s"] if best else None,
        "freshness_p99_s": best["freshness_p99_s"] if best else None,
        "state_bytes_per_active_visit": best["state_bytes_per_active_visit"] if best else None,
        "highest_rate_tried": steps[-1]["rate"] if steps else 0,
        "step_details": steps,
    }
