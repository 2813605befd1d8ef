"""Structured logs: one line per event, `key=value` pairs after a fixed prefix."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expo_platform.settings import Settings


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... logger=... msg="..."` plus any `extra` fields of the record."""

    _STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        line = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            line += " exc=" + _quote(self.formatException(record.exc_info))
        return line


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ' "=') else text


def configure_logging(level: str = "INFO") -> None:
    """Send the platform's logs to stderr as key=value lines; keep libraries quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("expo_platform")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_command(prog: str, action: Callable[[Settings], int | None]) -> int:
    """Run an entry point: load the settings, configure logging, call `action`. An `ExpoError`
    prints as one line on stderr and exits with status 2; Ctrl-C exits with 130."""
    from expo_platform.errors import ExpoError
    from expo_platform.settings import load_settings

    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        return action(settings) or 0
    except ExpoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class KafkaErrorLog:
    """librdkafka's errors as structured log lines: one per kind of error and `every_s`
    seconds, naming the client and the broker address. librdkafka itself would print a line
    per reconnect attempt on stderr ("Connect to ipv4#... failed", hundreds a minute while a
    broker is down); `quiet_kafka_conf` turns that off and routes the errors here."""

    def __init__(self, client: str, address: str, every_s: float = 60.0) -> None:
        self.client, self.address, self.every_s = client, address, every_s
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, error) -> None:
        kind = error.name()
        now = time.monotonic()
        if now - self.last.get(kind, float("-inf")) < self.every_s:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        self.last[kind] = now
        logging.getLogger("expo_platform.kafka").warning(
            "kafka client error",
            extra={
                "client": self.client,
                "address": self.address,
                "error": error.str(),
                "repeats_since_last": self.suppressed.pop(kind, 0),
            },
        )


def quiet_kafka_conf(client: str, address: str) -> dict:
    """librdkafka settings that keep its own log lines off stderr (log_level 0) and report
    its errors once a minute through `KafkaErrorLog`. For clients in this process only: a
    consumer in a Spark task gets `{"log_level": 0}` (a callback does not travel), and its
    failures surface as the task's error."""
    return {"log_level": 0, "error_cb": KafkaErrorLog(client, address)}
