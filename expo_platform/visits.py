"""Visits (METRICS.md sections 2 and 3): sessionize an hour's beacons, carrying open visits.

A visit is a maximal run of a session's beacons, ordered by (ts, event_id), whose consecutive
beacons are at most 35 minutes apart, and which lasts less than 12 hours: the first beacon at
12 hours or more after a visit's first beacon starts a new visit. So no visit state is kept
for longer than 12 hours, in either layer. The output of `build_sessions` has one row per visit
with beacons in the hour: the visit's state (what the next hour needs to continue it) and
the hour's facts per population, from which the hourly metrics are sums.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

VISIT_GAP_MS = 2_100_000
VISIT_MAX_MS = 12 * 3_600_000  # a visit lasts less than 12 hours
POPULATIONS = ("assigned", "qualified")

POPULATION_TYPE = "struct<experiment:string,variant:string,population:string>"
FACT_FIELDS = (
    "page_views",
    "visit_starts",
    "bounce_candidates",
    "orders",
    "units",
    "revenue",
    "errors",
    "page_load_ms_sum",
    "page_load_ms_count",
)
FACT_TYPE = (
    "struct<experiment:string,variant:string,population:string,visitor_id:string,"
    "page_views:bigint,visit_starts:bigint,bounce_candidates:bigint,orders:bigint,"
    "units:bigint,revenue:double,errors:bigint,page_load_ms_sum:bigint,"
    "page_load_ms_count:bigint>"
)
SESSIONS_SCHEMA = (
    "visit_id string, session_id string, visitor_id string, first_ts bigint, last_ts bigint, "
    "beacon_count bigint, continued boolean, order_ids array<string>, "
    f"populations array<{POPULATION_TYPE}>, facts array<{FACT_TYPE}>"
)


def populations(experiments: Column) -> Column:
    """The population keys of a beacon: (e, variant, assigned), plus qualified when flagged."""
    return F.flatten(
        F.transform(
            experiments,
            lambda x: F.when(
                x["qualified"],
                F.array(_population(x, "assigned"), _population(x, "qualified")),
            ).otherwise(F.array(_population(x, "assigned"))),
        )
    ).cast(f"array<{POPULATION_TYPE}>")


def _population(x: Column, name: str) -> Column:
    return F.struct(
        x["id"].alias("experiment"), x["variant"].alias("variant"), F.lit(name).alias("population")
    )


def open_visits(previous: DataFrame, hour_start_ms: int) -> DataFrame:
    """Visits of the previous hour that a beacon of this hour can still continue."""
    return previous.where(F.col("last_ts") >= F.lit(hour_start_ms - VISIT_GAP_MS))


def assign_visits(beacons: DataFrame, carried: DataFrame) -> DataFrame:
    """Give each beacon its visit: `visit_id`, `visit_seq` and the carried state of the visit.

    `carried` holds sessions rows of visits open at the hour's start; each enters the
    ordering as one pseudo-beacon at its last ts, so a beacon within 35 minutes joins it.
    """
    carry_rows = carried.select(
        "session_id",
        F.col("last_ts").alias("ts"),
        F.lit(True).alias("is_carry"),
        F.col("visit_id").alias("carry_visit_id"),
        F.col("first_ts").alias("carry_first_ts"),
        F.col("visitor_id").alias("carry_visitor_id"),
        F.col("beacon_count").alias("carry_count"),
        F.col("order_ids").alias("carry_order_ids"),
        F.col("populations").alias("carry_populations"),
    )
    rows = beacons.withColumn("is_carry", F.lit(False)).unionByName(
        carry_rows, allowMissingColumns=True
    )
    in_session = Window.partitionBy("session_id").orderBy("ts", "event_id")
    gap = F.col("ts") - F.lag("ts").over(in_session)
    starts = F.when(gap.isNull() | (gap > VISIT_GAP_MS), 1).otherwise(0)
    rows = rows.withColumn("visit_seq", F.sum(starts).over(in_session))
    # A run of this hour spans under an hour, so only a carried visit can reach 12 hours,
    # and at most once per hour: its beacons from first_ts + 12 h on are a new visit.
    in_run = Window.partitionBy("session_id", "visit_seq")
    run_first_ts = F.first("carry_first_ts", ignorenulls=True).over(in_run)
    too_long = F.coalesce(F.col("ts") >= run_first_ts + VISIT_MAX_MS, F.lit(False))
    rows = rows.withColumn("visit_seq", F.col("visit_seq") * 2 + too_long.cast("int"))

    in_visit = Window.partitionBy("session_id", "visit_seq")
    carried_state = {
        name: F.first(name, ignorenulls=True).over(in_visit)
        for name in (
            "carry_visit_id",
            "carry_first_ts",
            "carry_visitor_id",
            "carry_count",
            "carry_order_ids",
            "carry_populations",
        )
    }
    rows = rows.withColumns(carried_state)
    # With a carried row present its state wins below, so the first row may be either.
    first_beacon = F.min_by(F.struct("ts", "visitor_id"), F.struct("ts", "event_id")).over(in_visit)
    first_ts = F.coalesce(F.col("carry_first_ts"), first_beacon["ts"])
    new_beacons = F.count(F.when(~F.col("is_carry"), 1)).over(in_visit)
    return (
        rows.withColumns(
            {
                "visit_first_ts": first_ts,
                "visit_id": F.coalesce(
                    F.col("carry_visit_id"),
                    F.concat(F.col("session_id"), F.lit("#"), first_ts.cast("string")),
                ),
                "visit_visitor_id": F.coalesce(
                    F.col("carry_visitor_id"), first_beacon["visitor_id"]
                ),
                "visit_beacon_count": F.coalesce(F.col("carry_count"), F.lit(0)) + new_beacons,
                "carry_order_ids": F.coalesce(
                    F.col("carry_order_ids"), F.array().cast("array<string>")
                ),
                "carry_populations": F.coalesce(
                    F.col("carry_populations"), F.array().cast(f"array<{POPULATION_TYPE}>")
                ),
                "continued": F.col("carry_visit_id").isNotNull(),
            }
        )
        .where(~F.col("is_carry"))
        .drop("is_carry", "carry_visit_id", "carry_first_ts", "carry_visitor_id", "carry_count")
    )


def mark_counted_orders(visited: DataFrame) -> DataFrame:
    """`order_counted`: an order beacon that is the first of its order_id in its visit."""
    same_order = Window.partitionBy("session_id", "visit_seq", "order_id").orderBy("ts", "event_id")
    first_in_visit = F.row_number().over(same_order) == 1
    is_counted = (
        (F.col("type") == "order")
        & first_in_visit
        & ~F.array_contains(F.col("carry_order_ids"), F.col("order_id"))
    )
    return visited.withColumn("order_counted", F.coalesce(is_counted, F.lit(False)))


def population_facts(visited: DataFrame) -> DataFrame:
    """One row per (visit, population, beacon visitor) with the hour's sums."""
    rows = visited.select("*", F.explode(populations(F.col("experiments"))).alias("p")).select(
        "*", "p.experiment", "p.variant", "p.population"
    )
    key = F.struct("experiment", "variant", "population")
    first_in_population = Window.partitionBy(
        "session_id", "visit_seq", "experiment", "variant", "population"
    ).orderBy("ts", "event_id")
    starts_visit = (F.row_number().over(first_in_population) == 1) & ~F.array_contains(
        F.col("carry_populations"), key.cast(POPULATION_TYPE)
    )
    is_page_view = F.col("type") == "page_view"
    counted = F.col("order_counted")
    has_load = is_page_view & F.col("page_load_ms").isNotNull()
    rows = rows.withColumns(
        {
            "page_views": is_page_view.cast("bigint"),
            "visit_starts": starts_visit.cast("bigint"),
            # Final only once the next hour shows whether the visit went on.
            "bounce_candidates": (is_page_view & (F.col("visit_beacon_count") == 1)).cast("bigint"),
            "orders": counted.cast("bigint"),
            "units": F.when(counted, F.col("units")).otherwise(0),
            "revenue": F.when(counted, F.col("revenue")).otherwise(0.0),
            "errors": (F.col("type") == "error").cast("bigint"),
            "page_load_ms_sum": F.when(has_load, F.col("page_load_ms")).otherwise(0),
            "page_load_ms_count": has_load.cast("bigint"),
        }
    )
    return rows.groupBy("visit_id", "experiment", "variant", "population", "visitor_id").agg(
        *[F.sum(name).alias(name) for name in FACT_FIELDS]
    )


def visit_states(visited: DataFrame) -> DataFrame:
    """One row per visit with beacons in the hour: its state at the hour's end."""
    counted_order = F.when(F.col("order_counted"), F.col("order_id"))
    return visited.groupBy("visit_id").agg(
        F.first("session_id").alias("session_id"),
        F.first("visit_visitor_id").alias("visitor_id"),
        F.first("visit_first_ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
        F.first("visit_beacon_count").alias("beacon_count"),
        F.first("continued").alias("continued"),
        F.array_union(F.first("carry_order_ids"), F.collect_set(counted_order)).alias("order_ids"),
        F.array_union(
            F.first("carry_populations"),
            F.array_distinct(F.flatten(F.collect_list(populations(F.col("experiments"))))),
        ).alias("populations"),
    )


def build_sessions(beacons: DataFrame, previous: DataFrame, hour_start_ms: int) -> DataFrame:
    """The sessions rows of one hour from its counted beacons and the previous hour's rows."""
    visited = assign_visits(beacons, open_visits(previous, hour_start_ms)).transform(
        mark_counted_orders
    )
    facts = (
        population_facts(visited)
        .groupBy("visit_id")
        .agg(
            F.collect_list(
                F.struct("experiment", "variant", "population", "visitor_id", *FACT_FIELDS)
            ).alias("facts")
        )
    )
    states = visit_states(visited)
    no_facts = F.array().cast(f"array<{FACT_TYPE}>")
    return (
        states.join(facts, "visit_id", "left")
        .withColumn("facts", F.coalesce(F.col("facts"), no_facts).cast(f"array<{FACT_TYPE}>"))
        .select(*SESSIONS_COLUMNS)
    )


SESSIONS_COLUMNS = [c.strip().split(" ")[0] for c in SESSIONS_SCHEMA.split(", ")]
