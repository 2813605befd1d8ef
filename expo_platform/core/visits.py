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


# What a carried visit brings into the hour: its id, start, visitor, count, counted orders
# and the populations it has already started.
_CARRY = {
    "visit_id": "visit_id",
    "first_ts": "first_ts",
    "visitor_id": "visitor_id",
    "count": "beacon_count",
    "order_ids": "order_ids",
    "populations": "populations",
}


def assign_visits(beacons: DataFrame, carried: DataFrame) -> DataFrame:
    """Give each beacon its `visit_seq` in its session, `carry` and `order_counted`.

    One sort by (session_id, ts, event_id); every step after it is a window over that same
    order, so Spark sorts once. `carried` holds sessions rows of visits open at the hour's
    start; each enters the order as one pseudo-beacon at its last ts, ahead of every beacon
    of the hour, so the first run of beacons within 35 minutes of it continues it. `carry`
    is that visit's state on the beacons that continue it, and null elsewhere.
    """
    carry_rows = carried.select(
        "session_id",
        F.col("last_ts").alias("ts"),
        F.lit(True).alias("is_carry"),
        F.struct(*[F.col(c).alias(name) for name, c in _CARRY.items()]).alias("_carry"),
    )
    rows = beacons.withColumn("is_carry", F.lit(False)).unionByName(
        carry_rows, allowMissingColumns=True
    )
    in_session = Window.partitionBy("session_id").orderBy("ts", "event_id")
    so_far = in_session.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    before = in_session.rowsBetween(Window.unboundedPreceding, -1)
    gap = F.col("ts") - F.lag("ts").over(in_session)
    starts = F.when(gap.isNull() | (gap > VISIT_GAP_MS), 1).otherwise(0)
    rows = rows.withColumns(
        {
            "_run": F.sum(starts).over(so_far),
            # The newest carried visit so far: it precedes every beacon of the session.
            "_carry": F.last("_carry", ignorenulls=True).over(so_far),
        }
    )
    # A run of this hour spans under an hour, so only a carried visit can reach 12 hours,
    # and at most once per hour: its beacons from first_ts + 12 h on are a new visit.
    in_carried_run = (F.col("_run") == 1) & F.col("_carry").isNotNull()
    too_long = in_carried_run & (F.col("ts") >= F.col("_carry.first_ts") + VISIT_MAX_MS)
    rows = rows.withColumns(
        {
            "visit_seq": F.col("_run") * 2 + too_long.cast("int"),
            "carry": F.when(in_carried_run & ~too_long, F.col("_carry")),
        }
    )
    # An order counts once per visit: the first beacon of its order_id, unless carried.
    is_order = (F.col("type") == "order") & ~F.col("is_carry")
    visit_order = F.struct("visit_seq", "order_id")
    earlier_orders = F.collect_set(F.when(is_order, visit_order)).over(before)
    counted = (
        is_order
        & ~F.array_contains(earlier_orders, visit_order)
        & ~F.coalesce(F.array_contains(F.col("carry.order_ids"), F.col("order_id")), F.lit(False))
    )
    return (
        rows.withColumn("order_counted", F.coalesce(counted, F.lit(False)))
        .where(~F.col("is_carry"))
        .drop("is_carry", "_run", "_carry")
    )


_SUMMED = tuple(f for f in FACT_FIELDS if f not in ("visit_starts", "bounce_candidates"))


def beacon_groups(visited: DataFrame) -> DataFrame:
    """Sums per (visit, beacon visitor, experiments): the beacons of a visit mostly share one
    experiments list, so exploding populations after this is far cheaper than before it."""
    is_page_view = F.col("type") == "page_view"
    counted = F.col("order_counted")
    has_load = is_page_view & F.col("page_load_ms").isNotNull()
    contributions = {
        "page_views": is_page_view.cast("bigint"),
        "orders": counted.cast("bigint"),
        "units": F.when(counted, F.col("units")).otherwise(0),
        "revenue": F.when(counted, F.col("revenue")).otherwise(0.0),
        "errors": (F.col("type") == "error").cast("bigint"),
        "page_load_ms_sum": F.when(has_load, F.col("page_load_ms")).otherwise(0),
        "page_load_ms_count": has_load.cast("bigint"),
    }
    return visited.groupBy("session_id", "visit_seq", "visitor_id", "experiments").agg(
        *[F.sum(value).alias(name) for name, value in contributions.items()],
        F.count(F.lit(1)).alias("beacons"),
        F.min(F.struct("ts", "event_id")).alias("first_key"),
        F.max("ts").alias("last_ts"),
        F.collect_set(F.when(counted, F.col("order_id"))).alias("order_ids"),
        F.first("carry", ignorenulls=True).alias("carry"),
    )


def visit_rows(groups: DataFrame) -> DataFrame:
    """One row per visit with beacons in the hour: its state at the hour's end and its facts.

    Sums per (visit, population, beacon visitor), then per visit; every aggregation is keyed
    by (session_id, visit_seq, ...), so all reuse the sessionizing shuffle. A group without
    experiments keeps one row with a null population: it still counts for its visit's state;
    `_pos` 0 or null marks the one row of each group that counts its beacons. A population's
    visit start goes to the fact of its first beacon; bounce candidates are the page views
    of a visit of one beacon.
    """
    visit = ["session_id", "visit_seq"]
    rows = groups.select(
        "*", F.posexplode_outer(populations(F.col("experiments"))).alias("_pos", "p")
    ).select("*", "p.experiment", "p.variant", "p.population")
    once = F.coalesce(F.col("_pos"), F.lit(0)) == 0
    per_population = rows.groupBy(*visit, "experiment", "variant", "population", "visitor_id").agg(
        *[F.sum(name).alias(name) for name in _SUMMED],
        F.sum(F.when(once, F.col("beacons"))).alias("beacons"),
        F.min("first_key").alias("first_key"),
        F.min(F.struct("first_key.ts", "first_key.event_id", "visitor_id")).alias("first_beacon"),
        F.max("last_ts").alias("last_ts"),
        F.array_distinct(F.flatten(F.collect_list("order_ids"))).alias("order_ids"),
        F.first("carry", ignorenulls=True).alias("carry"),
    )
    has_population = F.col("population").isNotNull()
    population = F.struct("experiment", "variant", "population").cast(POPULATION_TYPE)
    fact = F.struct("experiment", "variant", "population", "visitor_id", "first_key", *_SUMMED)
    no_populations = F.array().cast(f"array<{POPULATION_TYPE}>")
    visits = per_population.groupBy(*visit).agg(
        F.first("carry", ignorenulls=True).alias("carry"),
        F.min("first_beacon").alias("first_beacon"),
        F.sum("beacons").alias("new_beacons"),
        F.max("last_ts").alias("last_ts"),
        F.array_distinct(F.flatten(F.collect_list("order_ids"))).alias("new_order_ids"),
        F.collect_set(F.when(has_population, population)).alias("new_populations"),
        F.collect_list(F.when(has_population, fact)).alias("_facts"),
    )
    carry = F.col("carry")
    first_ts = F.coalesce(carry["first_ts"], F.col("first_beacon.ts"))
    visits = visits.withColumns(
        {
            "visit_id": F.coalesce(
                carry["visit_id"],
                F.concat(F.col("session_id"), F.lit("#"), first_ts.cast("string")),
            ),
            "visitor_id": F.coalesce(carry["visitor_id"], F.col("first_beacon.visitor_id")),
            "first_ts": first_ts,
            "beacon_count": F.coalesce(carry["count"], F.lit(0)) + F.col("new_beacons"),
            "continued": carry.isNotNull(),
            "order_ids": F.array_union(
                F.coalesce(carry["order_ids"], F.array().cast("array<string>")),
                F.col("new_order_ids"),
            ),
            "_carried_populations": F.coalesce(carry["populations"], no_populations),
        }
    )
    return visits.withColumns(
        {
            "populations": F.array_union("_carried_populations", "new_populations"),
            "facts": F.transform("_facts", _final_fact).cast(f"array<{FACT_TYPE}>"),
        }
    )


def _final_fact(f: Column) -> Column:
    """A fact with its visit start and bounce candidates, which need the whole visit."""
    same_population = F.filter(
        F.col("_facts"),
        lambda g: (
            (g["experiment"] == f["experiment"])
            & (g["variant"] == f["variant"])
            & (g["population"] == f["population"])
        ),
    )
    key = F.struct(f["experiment"], f["variant"], f["population"]).cast(POPULATION_TYPE)
    starts = (
        f["first_key"] == F.array_min(F.transform(same_population, lambda g: g["first_key"]))
    ) & ~F.array_contains(F.col("_carried_populations"), key)
    bounces = F.when(F.col("beacon_count") == 1, f["page_views"]).otherwise(0)
    return F.struct(
        f["experiment"].alias("experiment"),
        f["variant"].alias("variant"),
        f["population"].alias("population"),
        f["visitor_id"].alias("visitor_id"),
        f["page_views"].alias("page_views"),
        starts.cast("bigint").alias("visit_starts"),
        bounces.alias("bounce_candidates"),
        *[f[name].alias(name) for name in _SUMMED if name != "page_views"],
    )


def build_sessions(beacons: DataFrame, previous: DataFrame, hour_start_ms: int) -> DataFrame:
    """The sessions rows of one hour from its counted beacons and the previous hour's rows."""
    visited = assign_visits(beacons, open_visits(previous, hour_start_ms))
    return visit_rows(beacon_groups(visited)).select(*SESSIONS_COLUMNS)


SESSIONS_COLUMNS = [c.strip().split(" ")[0] for c in SESSIONS_SCHEMA.split(", ")]
