"""Step 1 of a micro-batch: each Kafka message is read once and parsed once.

`parse_messages` is the only place the stream validates: the batch layer's own
`beacons.parse_beacons`, on the message as one landing-zone line. The micro-batch caches
its result, and every later step (landing, quarantine, de-duplication, sketches, quality)
reads that cache. Blank messages stay in it, marked, so that the batch's end offsets and
produce times count every message; `beacons` leaves them out.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.core import beacons as bc
from expo_platform.core.hours import event_hour_col, has_event_hour
from expo_platform.speed.files import EVENT_HOUR

BLANK = "blank"  # the column that marks a blank message
PRODUCED_QUANTILES = (0.0, 0.01, 0.5)  # of Kafka timestamps, for freshness (see Progress)
NO_EVENT_HOUR = "ts beyond the year 9999: no event hour"


def parse_messages(messages: DataFrame) -> DataFrame:
    """Kafka messages, validated like the batch layer's lines, with their event hour (null
    when `ts` has none: the message goes to the quarantine); a blank message is kept,
    marked BLANK (see `beacons`).

    A beacon valid but for an event time beyond the year 9999 has no hour to count in: the
    stream rejects it as `bad_field` (the batch layer, as `wrong_partition`).
    """
    parsed = (
        messages.select(
            _one_line("value"),
            bc.is_blank("value").alias(BLANK),
            "partition",
            "offset",
            "timestamp",
        )
        .transform(bc.parse_beacons)
        .withColumn(EVENT_HOUR, F.when(has_event_hour("ts"), event_hour_col("ts")))
    )
    timeless = F.col("reason").isNull() & F.col(EVENT_HOUR).isNull()
    return parsed.withColumns(
        {
            "reason": F.when(timeless, F.lit("bad_field")).otherwise(F.col("reason")),
            "detail": F.when(timeless, F.lit(NO_EVENT_HOUR)).otherwise(F.col("detail")),
        }
    )


def beacons(parsed: DataFrame) -> DataFrame:
    """The parsed messages that are beacons, valid or not: blank ones are neither."""
    return parsed.where(~F.col(BLANK)).drop(BLANK)


def produced_quantiles(parsed: DataFrame) -> list[int]:
    """Kafka timestamps (produce time) of the messages at PRODUCED_QUANTILES."""
    row = parsed.agg(
        F.percentile_approx(F.unix_millis(F.col("timestamp")), list(PRODUCED_QUANTILES))
    ).first()
    return [int(v) for v in (row[0] if row else None) or []]


def _one_line(value: str) -> F.Column:
    """A message as one landing-zone line: line breaks become spaces. A message that is not
    UTF-8 stays as it came (a regular expression would replace its bad bytes), and the parse
    rejects it."""
    one_line = F.regexp_replace(value, "[\\r\\n]+", " ")
    return F.when(F.is_valid_utf8(value), one_line).otherwise(F.col(value)).alias(value)
