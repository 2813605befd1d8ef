"""The speed layer on live traffic: step the rate of wall-clock traffic against `expo stream`.

For every rate: fresh ZooKeeper, broker, topic and lake; the real app (`expo stream`, 60 s
trigger) and the live generator (`expo generate --kafka`, event time = wall clock) as child
processes, for `step_seconds`. Every few seconds the Kafka lag (end offsets minus the offsets
the app committed to ZooKeeper) and the CPU time of each process tree are sampled.

The stream sustained a step when every micro-batch finished within the trigger, the lag did not
grow (its high in the step's second half is at most one trigger of traffic above its high in
the first), and the app caught up within two triggers of the end. What it sustained is the
rate the producer delivered: the live generator is Python on the same two cores, and when it
delivers under 95% of the rate asked (`input_short`), higher rates are not tried.

Freshness is from a message's produce time (its Kafka timestamp) to the end of the
micro-batch that wrote its metrics: p50 is the median of the micro-batches' medians, p99 the
highest of their 99th percentiles.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.stream import app_environ, state_per_visit
from expo_platform.ops import processes, zookeeper_broker
from expo_platform.settings import load_settings
from expo_platform.speed.offsets import ZkOffsets

PARTITIONS = 2
SAMPLE_SECONDS = 5.0
# The live generator first builds the visits already under way (two hours of pieces): the
# traffic starts this far ahead of the clock, so that is done before its first line is due.
WARM_UP_SECONDS = 150


def app_role(proc: psutil.Process) -> str:
    """Which part of the streaming app a process is: its JVM, a PySpark worker, or the
    driver's Python."""
    try:
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "driver_python"
    if name == "java":
        return "jvm"
    if "pyspark" in cmdline and ("daemon" in cmdline or "worker" in cmdline):
        return "python_workers"
    return "driver_python"


class CpuMeter:
    """CPU seconds (user + system) per role, from samples of each process tree: a process's
    time only grows, and a child that exits takes its time with it, so each process's
    highest sample counts."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], float] = {}

    def sample(self, roles: dict[str, psutil.Process]) -> None:
        for role, process in roles.items():
            try:
                tree = [process, *process.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                key = (app_role(proc) if role == "app" else role, proc.pid)
                self.seen[key] = max(self.seen.get(key, 0.0), times.user + times.system)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (role, _), seconds in self.seen.items():
            out[role] = round(out.get(role, 0.0) + seconds, 1)
        return out


def kafka_lag(bootstrap: str, topic: str, zookeeper: str, offsets_consumer: str) -> int | None:
    """Messages in the topic not yet committed by the app (None while unreadable)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "expo-bench-lag"})
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in range(PARTITIONS)
        }
    except Exception:  # noqa: BLE001 - a sample is skipped, not the step
        return None
    finally:
        consumer.close()
    try:
        with ZkOffsets(zookeeper, offsets_consumer) as zk:
            committed = zk.read(topic)
    except Exception:  # noqa: BLE001
        return None
    return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())


def _batches(lake: Path) -> list[dict]:
    folder = lake / "stream" / "progress"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def one_rate(
    rate: int, step_seconds: int, trigger: int, seed: int, services_dir: Path, progress
) -> dict:
    """Live traffic at `rate` beacons/s for `step_seconds` against a fresh app."""
    work = Path(tempfile.mkdtemp(prefix=f"expo-bench-live-{rate}-"))
    zk = zookeeper_broker.start_zookeeper(services_dir / f"zookeeper-{rate}", processes.free_port())
    broker = zookeeper_broker.start_broker(services_dir / f"broker-{rate}", processes.free_port())
    topic = f"live-{rate}"
    expo = str(Path(sys.executable).parent / "expo")
    app = producer = None
    try:
        zookeeper_broker.ensure_topic(broker.address, topic, PARTITIONS)
        env = app_environ(work, broker.address, topic, zk.address, trigger)
        # Where the app commits its offsets, as it reads its settings.
        offsets_consumer = load_settings(env).stream.offsets_consumer
        app_log = (work / "stream.log").open("w")
        app = subprocess.Popen([expo, "stream"], env=env, stdout=app_log, stderr=subprocess.STDOUT)
        time.sleep(20)  # Spark starts; the first trigger fires on its own clock
        producer_log = (work / "producer.log").open("w")
        producer = subprocess.Popen(
            [expo, "generate", "--kafka", broker.address, "--topic", topic, "--rate", str(rate)]
            + ["--backlog-minutes", "0", "--duration", str(step_seconds), "--seed", str(seed)]
            + ["--start-in", str(WARM_UP_SECONDS)],
            env=env,
            stdout=producer_log,
            stderr=subprocess.STDOUT,
        )
        progress(f"live: {rate:,}/s for {step_seconds}s (trigger {trigger}s)")
        roles = {
            "app": psutil.Process(app.pid),
            "broker": psutil.Process(broker.pid),
            "producer": psutil.Process(producer.pid),
        }
        meter, lags = CpuMeter(), []
        started = time.monotonic()
        while producer.poll() is None:
            meter.sample(roles)
            since = time.monotonic() - started - WARM_UP_SECONDS  # < 0: before the traffic
            lags.append((since, kafka_lag(broker.address, topic, zk.address, offsets_consumer)))
            time.sleep(SAMPLE_SECONDS)
        producer_log.close()
        sent = _sent(work / "producer.log")
        # Catch-up: at most two triggers for what is left.
        deadline = time.monotonic() + 2 * trigger + 10
        caught_up = False
        while time.monotonic() < deadline:
            meter.sample({"app": roles["app"], "broker": roles["broker"]})
            if kafka_lag(broker.address, topic, zk.address, offsets_consumer) == 0:
                caught_up = True
                break
            time.sleep(SAMPLE_SECONDS)
        meter.sample({"app": roles["app"], "broker": roles["broker"]})
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=300)
        app_log.close()
        batches = [b for b in _batches(work / "lake") if b.get("messages")]
        return _step_result(
            rate, step_seconds, trigger, sent, batches, lags, caught_up, meter, work, progress
        )
    finally:
        for child in (producer, app):
            if child is not None and child.poll() is None:
                child.kill()
        broker.stop()
        zk.stop()
        shutil.rmtree(work, ignore_errors=True)


def _sent(log: Path) -> int:
    """Messages the producer delivered, from its summary line (`sent=N delivered=N ...`)."""
    for line in reversed(log.read_text().splitlines()):
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("delivered", "").isdigit():
            return int(fields["delivered"])
    return 0


def _step_result(
    rate, step_seconds, trigger, sent, batches, lags, caught_up, meter, work, progress
) -> dict:
    seconds = [b["batch_seconds"] for b in batches]
    fresh50 = [(b["done_ms"] - b["produced_ms"][2]) / 1000 for b in batches if b["produced_ms"]]
    fresh99 = [(b["done_ms"] - b["produced_ms"][1]) / 1000 for b in batches if b["produced_ms"]]
    read = [(t, lag) for t, lag in lags if lag is not None and t >= 0]
    half = step_seconds / 2
    first_high = max((lag for t, lag in read if t < half), default=0)
    second_high = max((lag for t, lag in read if t >= half), default=0)
    growing = second_high > first_high + rate * trigger
    state, open_visits = state_per_visit(work / "lake")
    result = {
        "rate": rate,
        "sent": sent,
        "consumed": sum(b["messages"] for b in batches),
        "batches": len(batches),
        "max_batch_s": round(max(seconds, default=0.0), 1),
        "median_batch_s": round(_median(seconds) or 0.0, 1),
        "lag_high_first_half": first_high,
        "lag_high_second_half": second_high,
        "caught_up": caught_up,
        "freshness_p50_s": round(_median(fresh50), 1) if fresh50 else None,
        "freshness_p99_s": round(max(fresh99), 1) if fresh99 else None,
        "cpu_s": meter.totals(),
        "state_bytes_per_open_visit": round(state / open_visits) if open_visits else None,
        "median_step_s": median_steps(batches),
    }
    result["delivered_per_s"] = round(sent / step_seconds)
    result["input_short"] = sent < 0.95 * rate * step_seconds
    result["sustained"] = bool(batches and max(seconds) < trigger and not growing and caught_up)
    progress(f"  {json.dumps(result)}")
    return result


def median_steps(batches: list[dict]) -> dict[str, float]:
    """Per step of a micro-batch (`Progress.steps`), its median seconds over the batches:
    where a step's time goes."""
    names = dict.fromkeys(name for b in batches for name in b.get("steps", {}))
    return {
        name: round(_median([b["steps"].get(name, 0.0) for b in batches]) or 0.0, 2)
        for name in names
    }


def run(rates: list[int], step_seconds: int, trigger: int, seed: int, progress) -> dict:
    """Step through the rates, stopping after the first one not sustained."""
    services_dir = Path(tempfile.mkdtemp(prefix="expo-bench-live-services-"))
    steps = []
    try:
        for rate in rates:
            steps.append(one_rate(rate, step_seconds, trigger, seed, services_dir, progress))
            if not steps[-1]["sustained"] or steps[-1]["input_short"]:
                break
    finally:
        shutil.rmtree(services_dir, ignore_errors=True)
    done = [s for s in steps if s["sustained"]]
    best = max(done, key=lambda s: s["delivered_per_s"], default=None)
    return {
        "live_sustained_beacons_per_s": best["delivered_per_s"] if best else 0,
        "live_input_short": bool(steps and steps[-1]["input_short"]),
        "live_freshness_p99_s": best["freshness_p99_s"] if best else None,
        "live_freshness_p50_s": best["freshness_p50_s"] if best else None,
        "live_highest_rate_tried": steps[-1]["rate"] if steps else 0,
        "live_trigger_s": trigger,
        "live_step_details": steps,
    }
