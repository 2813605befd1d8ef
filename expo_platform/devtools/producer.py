"""Traffic into Kafka: live beacons stamped with the wall clock (`produce_realtime`), or a
replay of the generator's period at a steady rate (`produce_live`, for benchmarks).

Each message's key is the beacon's visitor_id (when the line has one), so a visitor's beacons
stay in one partition and in order. Delivery errors are counted in the report, never dropped.

Tansu (the local test broker) reports a partition's end offset as the base offset of its last
record batch + 1. Tests that need exact end offsets produce with `EXACT_END_OFFSETS`
(one record per batch, slow); production settings stay batched.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer

from expo_platform.devtools.generator import GeneratorConfig, iter_lines
from expo_platform.devtools.live_traffic import live_lines
from expo_platform.errors import ExpoError
from expo_platform.logs import quiet_kafka_conf

log = logging.getLogger("expo_platform.devtools.producer")

# One record per produce request batch: Tansu then reports true end offsets.
EXACT_END_OFFSETS = {"batch.num.messages": "1"}
# A record batch per 500 ms instead of per 20 ms: at 840 messages/s the local broker's CPU
# per message (produce and consume) falls from 0.046 ms to 0.003 ms (docs/benchmarks.md),
# and half a second is nothing against a 60 s trigger.
DEFAULT_CONF = {
    "linger.ms": "500",
    "compression.type": "lz4",
    "enable.idempotence": "false",
    "acks": "all",
    "message.timeout.ms": "60000",
}
FLUSH_TIMEOUT = 60.0
PROGRESS_EVERY = 1.0  # seconds between progress lines


@dataclass
class ProduceReport:
    """What a producer run sent: per kind, delivered, failed, and the pace it kept."""

    sent_by_kind: Counter = field(default_factory=Counter)
    delivered: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    requested_rate: float | None = None
    exhausted: bool = False  # the generator ran out before the duration ended

    @property
    def sent(self) -> int:
        """Messages handed to the client."""
        return sum(self.sent_by_kind.values())

    @property
    def rate(self) -> float:
        """Messages per second achieved (sent over the run's wall time)."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """One key=value line for logs and the command line."""
        kinds = ",".join(f"{k}:{v}" for k, v in sorted(self.sent_by_kind.items()))
        return (
            f"sent={self.sent} delivered={self.delivered} failed={self.failed} "
            f"rate={self.rate:.0f}/s elapsed={self.elapsed:.1f}s kinds={kinds}"
        )


def visitor_key(line: str | bytes) -> str | None:
    """The visitor_id of a beacon line, or None when the line has no usable one."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested too deeply
        return None
    visitor = data.get("visitor_id") if isinstance(data, dict) else None
    return visitor if isinstance(visitor, str) and visitor else None


class _Delivery:
    """Counts delivery reports into a ProduceReport (called from Producer.poll/flush)."""

    def __init__(self, report: ProduceReport) -> None:
        self.report = report

    def __call__(self, error: KafkaError | None, message) -> None:
        if error is None:
            self.report.delivered += 1
        else:
            self.report.failed += 1
            self.report.errors[error.str()] += 1

    def refused(self, error: KafkaException) -> None:
        """A message the client refused outright (e.g. larger than message.max.bytes)."""
        self.report.failed += 1
        self.report.errors[f"refused: {error.args[0].name()}"] += 1


def make_producer(bootstrap: str, conf: Mapping[str, str] | None = None) -> Producer:
    """A confluent-kafka producer with the platform's defaults, overridden by `conf`."""
    settings = {
        "bootstrap.servers": bootstrap,
        **quiet_kafka_conf("producer", bootstrap),
        **DEFAULT_CONF,
        **(conf or {}),
    }
    try:
        return Producer(settings)
    except KafkaException as exc:
        raise ExpoError(f"cannot create a Kafka producer for {bootstrap}: {exc}") from None


def _send(producer: Producer, topic: str, line: str | bytes, on_delivery: _Delivery) -> None:
    """Hand one message to the client, waiting while its local queue is full; a message it
    refuses is counted as failed, with the reason, and the run goes on."""
    while True:
        try:
            producer.produce(topic, value=line, key=visitor_key(line), on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # queue full: serve delivery reports, then try again
        except KafkaException as error:
            on_delivery.refused(error)
            return


def _finish(producer: Producer, report: ProduceReport, started: float) -> ProduceReport:
    """Flush; messages still queued after the timeout count as failed."""
    left = producer.flush(FLUSH_TIMEOUT)
    if left:
        report.failed += left
        report.errors["not delivered before the flush timeout"] += left
    report.elapsed = time.monotonic() - started
    log_level = logging.WARNING if report.failed else logging.INFO
    log.log(log_level, "produce finished", extra={"summary": report.summary()})
    return report


def produce_live(
    bootstrap: str,
    topic: str,
    config: GeneratorConfig,
    rate: float,
    duration: float,
    progress: Callable[[str], None] | None = None,
    conf: Mapping[str, str] | None = None,
) -> ProduceReport:
    """Send the generator's lines at `rate` messages/s for up to `duration` seconds."""
    if rate <= 0 or duration <= 0:
        raise ExpoError("rate and duration must be > 0")
    producer = make_producer(bootstrap, conf)
    report = ProduceReport(requested_rate=rate)
    on_delivery = _Delivery(report)
    started = time.monotonic()
    deadline = started + duration
    next_progress = started + PROGRESS_EVERY
    lines = iter_lines(config)
    sent = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        # Pacing: message n is due at started + n / rate; sleep only when ahead.
        due = started + sent / rate
        if due > now:
            producer.poll(0)
            time.sleep(min(due - now, deadline - now))
            continue
        item = next(lines, None)
        if item is None:
            report.exhausted = True
            break
        _, line, kind = item
        _send(producer, topic, line, on_delivery)
        report.sent_by_kind[kind] += 1
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
        if progress and now >= next_progress:
            progress(f"sent {sent:,} ({sent / (now - started):,.0f}/s), failed {report.failed}")
            next_progress = now + PROGRESS_EVERY
    return _finish(producer, report, started)


def produce_realtime(
    bootstrap: str,
    topic: str,
    config: GeneratorConfig,
    rate: float,
    backlog_minutes: float = 0.0,
    duration: float | None = None,
    progress: Callable[[str], None] | None = None,
    conf: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    start_in: float = 0.0,
) -> ProduceReport:
    """Live traffic stamped with the wall clock, about `rate` beacons/s (`live_lines`).

    The last `backlog_minutes` of traffic go first, as fast as the broker takes them; then
    each line is sent when the clock reaches its time, for `duration` seconds (None: until
    stopped) from the first line. The stream's event time then follows the wall clock, as the
    hourly schedule does. `start_in` seconds put the traffic's start that far ahead: the
    generator's warm-up (the visits already under way) is then done before the first line is
    due, instead of being sent in a burst as a short backlog.
    """
    if rate <= 0 or backlog_minutes < 0 or (duration is not None and duration <= 0):
        raise ExpoError("the rate and duration must be > 0 and the backlog >= 0")
    producer = make_producer(bootstrap, conf)
    report = ProduceReport(requested_rate=rate)
    on_delivery = _Delivery(report)
    start_ms = int((clock() + start_in) * 1000) - int(backlog_minutes * 60_000)
    lines = live_lines(config, rate, start_ms)
    arrival, line, kind = next(lines)
    log.info("traffic ready", extra={"first_due_in_s": round(arrival / 1000 - clock(), 1)})
    started = time.monotonic() + max(0.0, arrival / 1000 - clock())
    deadline = None if duration is None else started + duration
    next_progress = started + PROGRESS_EVERY
    live = False
    while deadline is None or time.monotonic() < deadline:
        wait = arrival / 1000 - clock()
        if wait > 0:
            if not live:
                live = True
                log.info("backlog sent, live from now", extra={"sent": report.sent})
            producer.poll(min(wait, 0.2))
        else:
            _send(producer, topic, line, on_delivery)
            report.sent_by_kind[kind] += 1
            if report.sent % 1000 == 0:
                producer.poll(0)
            arrival, line, kind = next(lines)
        if progress and time.monotonic() >= next_progress:
            behind = max(0.0, clock() - arrival / 1000)
            stage = "live" if live else "backlog"
            progress(
                f"sent {report.sent:,}, failed {report.failed}, {stage}, {behind:,.0f}s behind"
            )
            next_progress = time.monotonic() + PROGRESS_EVERY
    return _finish(producer, report, started)


def produce_lines(
    bootstrap: str,
    topic: str,
    lines: Iterable[str | bytes],
    conf: Mapping[str, str] | None = None,
) -> ProduceReport:
    """Send lines as fast as the client takes them (tests, backfills); flush at the end."""
    producer = make_producer(bootstrap, conf)
    report = ProduceReport()
    on_delivery = _Delivery(report)
    started = time.monotonic()
    for n, line in enumerate(lines, 1):
        _send(producer, topic, line, on_delivery)
        report.sent_by_kind["line"] += 1
        if n % 1000 == 0:
            producer.poll(0)
    return _finish(producer, report, started)
