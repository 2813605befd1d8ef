"""The sessions rows of the hours a micro-batch touched, with the batch layer's
`visits.build_sessions`: only the sessions the batch touched are sessionized again."""

from __future__ import annotations

import shutil
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.core.hours import ONE_HOUR, hour_key, hour_start_ms
from expo_platform.core.visits import build_sessions
from expo_platform.lake import STREAM_BEACONS
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR


def sessionize(ctx: BatchContext, hours: list[datetime], touched: DataFrame) -> None:
    """Sessions rows of these hours, in order, after the batch counted its beacons.

    `touched` holds (EVENT_HOUR, session_id) of the batch's on-time beacons. Only
    those sessions are sessionized again: a session's rows in hour H follow from its
    beacons in H and its rows in H - 1, so they change only if the batch has a beacon of
    it in H or an earlier hour. Every other session keeps its rows. The result equals
    sessionizing the whole hour, at the cost of a scan of the hour's beacons instead of a
    sort of them all. An hour without a sessions folder is sessionized whole.
    """
    files, spark = ctx.files, ctx.spark
    for hour in hours:
        paths = files.beacon_paths(hour, ctx.key)
        target = files.session_path(hour)
        if not paths:
            shutil.rmtree(target, ignore_errors=True)
            continue
        beacons = STREAM_BEACONS.read(spark, paths)
        carried = files.sessions(spark, [hour - ONE_HOUR])
        if target.is_dir():
            sessions = F.broadcast(
                touched.where(F.col(EVENT_HOUR) <= hour_key(hour)).select("session_id").distinct()
            )
            rows = build_sessions(
                beacons.join(sessions, "session_id", "left_semi"),
                carried.join(sessions, "session_id", "left_semi"),
                hour_start_ms(hour),
            ).unionByName(files.sessions(spark, [hour]).join(sessions, "session_id", "left_anti"))
        else:
            rows = build_sessions(beacons, carried, hour_start_ms(hour))
        tmp = files.tmp_dir / f"sessions-{ctx.key}"
        rows.write.mode("overwrite").parquet(str(tmp))
        files.move_in(tmp, target)
