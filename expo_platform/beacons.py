"""Beacons: parse raw lines, validate them against METRICS.md section 1, de-duplicate.

Each line is parsed once into a VARIANT, whose value types are exactly JSON's (an integer is
BIGINT, `17.0` is a DECIMAL, `"17"` is a STRING), so every rule can be checked precisely
with Spark expressions and no Python per row.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from expo_platform.hours import HOUR_MS

BEACON_TYPES = ("page_view", "add_to_cart", "order", "error")
REJECT_REASONS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
DUPLICATE = "duplicate"
VALID = "valid"

EXPERIMENTS_TYPE = "array<struct<id:string,variant:string,qualified:boolean>>"

# The columnar form of a counted beacon: the `beacons` table and the input of visits.
BEACON_SCHEMA = (
    "event_id string, visitor_id string, session_id string, ts bigint, type string, "
    f"page string, experiments {EXPERIMENTS_TYPE}, order_id string, revenue double, "
    "units bigint, page_load_ms bigint, error string"
)
BEACON_COLUMNS = [c.strip().split(" ")[0] for c in BEACON_SCHEMA.split(", ")]
REJECT_SCHEMA = "raw string, reason string, detail string, event_id string, ts bigint"

_INTEGER_KINDS = ("BIGINT", "INT", "SMALLINT", "TINYINT")
_OK, _MISSING, _BAD = 0, 1, 2


def _kind(v: Column, path: str) -> Column:
    """The JSON type of the value at `path`: STRING, BIGINT, OBJECT<...>, VOID (null)...

    NULL when the path is absent.
    """
    return F.schema_of_variant(F.variant_get(v, path, "variant"))


# Top-level leaves whose JSON type the rules test, each computed once per line into a column
# (CASE WHEN branches after the first would otherwise compute it again).
_LEAF_PATHS = (
    "$.event_id",
    "$.visitor_id",
    "$.session_id",
    "$.ts",
    "$.type",
    "$.order.order_id",
    "$.order.revenue",
    "$.order.units",
    "$.perf.page_load_ms",
)


def _kind_column(path: str) -> str:
    return "_k" + path.removeprefix("$").replace(".", "_")


def _leaf_kind(path: str) -> Column:
    """The precomputed JSON type of a top-level leaf (see `_LEAF_PATHS`)."""
    return F.col(_kind_column(path))


def _absent(kind: Column) -> Column:
    return kind.isNull() | (kind == "VOID")


def _is_integer(kind: Column) -> Column:
    return kind.isin(*_INTEGER_KINDS)


def _is_number(kind: Column) -> Column:
    return _is_integer(kind) | kind.isin("DOUBLE", "FLOAT") | kind.startswith("DECIMAL")


def _string_status(v: Column, path: str) -> Column:
    """Status of a required non-empty string field."""
    kind = _leaf_kind(path)
    text = F.try_variant_get(v, path, "string")
    return (
        F.when(_absent(kind) | ((kind == "STRING") & (text == "")), _MISSING)
        .when(kind != "STRING", _BAD)
        .otherwise(_OK)
    )


def _ts_status(v: Column) -> Column:
    """Status of `ts`: a JSON integer > 0."""
    kind = _leaf_kind("$.ts")
    return (
        F.when(
            _absent(kind) | ((kind == "STRING") & (F.try_variant_get(v, "$.ts", "string") == "")),
            _MISSING,
        )
        .when(~_is_integer(kind), _BAD)
        .when(F.try_variant_get(v, "$.ts", "bigint") <= 0, _BAD)
        .otherwise(_OK)
    )


def _type_status(v: Column) -> Column:
    """Status of `type`: one of BEACON_TYPES."""
    base = _string_status(v, "$.type")
    known = F.try_variant_get(v, "$.type", "string").isin(*BEACON_TYPES)
    return F.when((base == _OK) & ~known, _BAD).otherwise(base)


def _experiment_ok(x: Column) -> Column:
    """One `experiments` entry: non-empty string id and variant, optional boolean qualified."""
    id_kind, variant_kind = _kind(x, "$.id"), _kind(x, "$.variant")
    qualified_kind = _kind(x, "$.qualified")
    return (
        (id_kind == "STRING")
        & (F.try_variant_get(x, "$.id", "string") != "")
        & (variant_kind == "STRING")
        & (F.try_variant_get(x, "$.variant", "string") != "")
        & (_absent(qualified_kind) | (qualified_kind == "BOOLEAN"))
    )


def _experiments_status(v: Column) -> Column:
    """Status of `experiments`: absent, null or an array of well-formed entries."""
    kind = _kind(v, "$.experiments")
    entries = F.try_variant_get(v, "$.experiments", "array<variant>")
    return (
        F.when(_absent(kind), _OK)
        .when(~kind.startswith("ARRAY"), _BAD)
        .when(F.forall(entries, _experiment_ok), _OK)
        .otherwise(_BAD)
    )


def _order_status(v: Column) -> Column:
    """Status of `order`, required for order beacons: order_id, revenue >= 0, units >= 0."""
    is_order = F.try_variant_get(v, "$.type", "string") == "order"
    kind = _kind(v, "$.order")
    order_id_kind = _leaf_kind("$.order.order_id")
    revenue_kind, units_kind = _leaf_kind("$.order.revenue"), _leaf_kind("$.order.units")
    well_formed = (
        (order_id_kind == "STRING")
        & (F.try_variant_get(v, "$.order.order_id", "string") != "")
        & _is_number(revenue_kind)
        & (F.try_variant_get(v, "$.order.revenue", "double") >= 0)
        & _is_integer(units_kind)
        & (F.try_variant_get(v, "$.order.units", "bigint") >= 0)
    )
    return (
        F.when(~F.coalesce(is_order, F.lit(False)), _OK)
        .when(_absent(kind), _MISSING)
        .when(~kind.startswith("OBJECT"), _BAD)
        .when(F.coalesce(well_formed, F.lit(False)), _OK)
        .otherwise(_BAD)
    )


def _perf_status(v: Column) -> Column:
    """Status of `perf`: optional object; `page_load_ms`, when present, an integer >= 0."""
    kind, load_kind = _kind(v, "$.perf"), _leaf_kind("$.perf.page_load_ms")
    return (
        F.when(_absent(kind), _OK)
        .when(~kind.startswith("OBJECT"), _BAD)
        .when(_absent(load_kind), _OK)
        .when(~_is_integer(load_kind), _BAD)
        .when(F.try_variant_get(v, "$.perf.page_load_ms", "bigint") < 0, _BAD)
        .otherwise(_OK)
    )


def _first_experiments(entries: Column) -> Column:
    """Keep the first entry of each experiment id: a beacon listing `e` twice counts it once."""
    return F.filter(
        entries,
        lambda x, i: F.array_position(F.transform(entries, lambda y: y["id"]), x["id"]) == i + 1,
    )


def _experiments(v: Column) -> Column:
    entries = F.coalesce(F.try_variant_get(v, "$.experiments", "array<variant>"), F.array())
    typed = F.transform(
        entries,
        lambda x: F.struct(
            F.try_variant_get(x, "$.id", "string").alias("id"),
            F.try_variant_get(x, "$.variant", "string").alias("variant"),
            F.coalesce(F.try_variant_get(x, "$.qualified", "boolean"), F.lit(False)).alias(
                "qualified"
            ),
        ),
    )
    return _first_experiments(typed).cast(EXPERIMENTS_TYPE)


def _json_text(v: Column, path: str) -> Column:
    """The value at `path` as JSON text, kept as it came."""
    return F.to_json(F.variant_get(v, path, "variant"))


# Checked in this order, so the detail names the first field that breaks the rule.
_FIELD_CHECKS = (
    ("event_id", lambda v: _string_status(v, "$.event_id")),
    ("visitor_id", lambda v: _string_status(v, "$.visitor_id")),
    ("session_id", lambda v: _string_status(v, "$.session_id")),
    ("ts", _ts_status),
    ("type", _type_status),
    ("order", _order_status),
    ("experiments", _experiments_status),
    ("perf", _perf_status),
)


def _first_field_with(status: int, statuses: dict[str, Column]) -> Column:
    return F.coalesce(*[F.when(s == status, F.lit(name)) for name, s in statuses.items()])


def drop_blank_lines(lines: DataFrame, value_col: str = "value") -> DataFrame:
    """Blank lines are not beacons: they are neither counted nor rejected."""
    return lines.where(F.trim(F.col(value_col)) != "")


def parse_beacons(lines: DataFrame, value_col: str = "value") -> DataFrame:
    """Parse raw beacon lines into typed columns plus `reason` and `detail` (null when valid).

    The output keeps every input column, renames the text to `raw` and adds BEACON_COLUMNS.
    `reason` is the first rejection rule that applies (malformed_json, missing_field,
    bad_field); `wrong_partition` needs the landing hour: see `check_partition`.
    """
    parsed = lines.withColumnRenamed(value_col, "raw").withColumn(
        "_v", F.try_parse_json(F.col("raw"))
    )
    v = F.col("_v")
    kinds = {_kind_column(path): _kind(v, path) for path in _LEAF_PATHS}
    parsed = parsed.withColumns(kinds)
    statuses = {name: check(v) for name, check in _FIELD_CHECKS}
    parsed = parsed.withColumns({f"_s_{name}": s for name, s in statuses.items()})
    statuses = {name: F.col(f"_s_{name}") for name in statuses}
    # A parsed line is an object when its text starts with `{`: cheaper than its schema.
    is_object = v.isNotNull() & F.col("raw").rlike(r"^[ \t\r\n]*\{")
    status_list = F.array(*statuses.values())
    reason = (
        F.when(~is_object, F.lit("malformed_json"))
        .when(F.array_contains(status_list, _MISSING), F.lit("missing_field"))
        .when(F.array_contains(status_list, _BAD), F.lit("bad_field"))
    )
    detail = (
        F.when(~is_object, F.lit("not a JSON object"))
        .when(reason == "missing_field", _first_field_with(_MISSING, statuses))
        .when(reason == "bad_field", _first_field_with(_BAD, statuses))
    )
    # Extraction never fails: a field of the wrong type reads as null, and such a beacon
    # is rejected anyway; its event_id and ts still help find it in the quarantine.
    is_order = F.try_variant_get(v, "$.type", "string") == "order"
    typed = {
        "event_id": F.try_variant_get(v, "$.event_id", "string"),
        "visitor_id": F.try_variant_get(v, "$.visitor_id", "string"),
        "session_id": F.try_variant_get(v, "$.session_id", "string"),
        "ts": F.try_variant_get(v, "$.ts", "bigint"),
        "type": F.try_variant_get(v, "$.type", "string"),
        "page": F.try_variant_get(v, "$.page", "string"),
        "experiments": _experiments(v),
        # `order` is ignored unless the beacon is an order.
        "order_id": F.when(is_order, F.try_variant_get(v, "$.order.order_id", "string")),
        "revenue": F.when(is_order, F.try_variant_get(v, "$.order.revenue", "double")),
        "units": F.when(is_order, F.try_variant_get(v, "$.order.units", "bigint")),
        "page_load_ms": F.try_variant_get(v, "$.perf.page_load_ms", "bigint"),
        "error": _json_text(v, "$.error"),
    }
    out = parsed.withColumns({**typed, "reason": reason, "detail": detail})
    return out.drop("_v", *kinds, *[f"_s_{name}" for name in statuses])


def check_partition(beacons: DataFrame, hour_index: int) -> DataFrame:
    """Reject, as `wrong_partition`, valid beacons whose ts lies outside the landing hour."""
    outside = F.col("reason").isNull() & (F.floor(F.col("ts") / HOUR_MS) != F.lit(hour_index))
    return beacons.withColumns(
        {
            "reason": F.when(outside, F.lit("wrong_partition")).otherwise(F.col("reason")),
            "detail": F.when(outside, F.lit("ts outside the landing hour")).otherwise(
                F.col("detail")
            ),
        }
    )


def mark_duplicates(beacons: DataFrame) -> DataFrame:
    """Mark valid beacons that repeat an `event_id`: only the first by (ts, raw) counts.

    Ties in ts are broken by the raw text, so the result does not depend on file order.
    """
    valid = F.col("reason").isNull()
    # Rejected lines rank apart: only valid beacons compete for being the first.
    rank = F.row_number().over(Window.partitionBy("event_id", valid).orderBy("ts", "raw"))
    is_duplicate = valid & (rank > 1)
    return beacons.withColumns(
        {
            "reason": F.when(is_duplicate, F.lit(DUPLICATE)).otherwise(F.col("reason")),
            "detail": F.when(is_duplicate, F.lit("event_id seen earlier")).otherwise(
                F.col("detail")
            ),
        }
    )


def classify_hour(lines: DataFrame, hour_index: int) -> DataFrame:
    """Parse, validate and de-duplicate one landing hour's lines; `reason` null = counted."""
    return (
        lines.transform(drop_blank_lines)
        .transform(parse_beacons)
        .transform(lambda df: check_partition(df, hour_index))
        .transform(mark_duplicates)
    )


def counted_beacons(classified: DataFrame) -> DataFrame:
    """The counted beacons, in the columnar BEACON_COLUMNS form."""
    return classified.where(F.col("reason").isNull()).select(*BEACON_COLUMNS)


def rejected_beacons(classified: DataFrame) -> DataFrame:
    """The quarantine: raw text and reason of every line that does not count."""
    return classified.where(F.col("reason").isNotNull()).select(
        "raw", "reason", "detail", "event_id", "ts"
    )


def quality_counts(classified: DataFrame) -> dict[str, int]:
    """Data-quality metrics of one hour (METRICS.md section 5), with every reason present."""
    by_reason = {
        row["reason"]: row["n"]
        for row in classified.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    counts = {
        "beacons_total": sum(by_reason.values()),
        "beacons_valid": by_reason.get(None, 0),
        "beacons_duplicate": by_reason.get(DUPLICATE, 0),
    }
    counts.update({f"beacons_rejected_{r}": by_reason.get(r, 0) for r in REJECT_REASONS})
    return counts
