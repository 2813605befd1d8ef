"""Hand-built click streams for the library's unit tests: beacons, and sessions chained by hour."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession

from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, hour_start_ms
from expo_platform.core.visits import SESSIONS_SCHEMA, build_sessions

H0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
MIN = 60_000
GAP = 35 * MIN
_ids = iter(range(1_000_000))


def at(hour: int, minute: float) -> int:
    """Epoch ms at `minute` past hour H0 + `hour`."""
    return hour_start_ms(H0) + hour * HOUR_MS + int(minute * MIN)


def b(ts: int, type_: str = "page_view", *, session="s1", visitor="v1", exps=None, **extra):
    """A beacon dict; `exps` is a list of (id, variant, qualified)."""
    exps = [("exp", "A", True)] if exps is None else exps
    data = {
        "event_id": f"e{next(_ids):06d}",
        "visitor_id": visitor,
        "session_id": session,
        "ts": ts,
        "type": type_,
        "experiments": [{"id": e, "variant": v, "qualified": q} for e, v, q in exps],
        **extra,
    }
    if type_ == "order" and "order" not in data:
        data["order"] = {"order_id": "o1", "revenue": 10.0, "units": 1}
    return data


def chain_sessions(
    spark: SparkSession, beacons: list[dict], hours: int
) -> tuple[list[DataFrame], dict[int, list[str]]]:
    """Sessions rows of hours 0..hours-1 after H0, each hour carrying the one before.

    Returns the sessions per hour and the beacon lines per hour.
    """
    by_hour = {h: [] for h in range(hours)}
    for beacon in beacons:
        by_hour[(beacon["ts"] - hour_start_ms(H0)) // HOUR_MS].append(json.dumps(beacon))
    empty = spark.createDataFrame([], SESSIONS_SCHEMA)
    sessions, previous = [], empty
    for h in range(hours):
        if not by_hour[h]:  # an hour without beacons has no sessions rows: skip Spark
            sessions.append(empty)
            previous = empty
            continue
        hour = H0 + timedelta(hours=h)
        lines = spark.createDataFrame([(line,) for line in by_hour[h]], "value string")
        counted = bc.counted_beacons(bc.classify_hour(lines, hour_start_ms(hour) // HOUR_MS))
        rows = build_sessions(counted, previous, hour_start_ms(hour)).localCheckpoint()
        sessions.append(rows)
        previous = rows
    return sessions, by_hour
