"""Beacons: parse raw lines, validate them against METRICS.md section 1, de-duplicate.

Each line is parsed once into a VARIANT, whose value types are exactly JSON's (an integer is
BIGINT, `17.0` is a DECIMAL, `"17"` is a STRING), so every rule can be checked precisely
with Spark expressions and no Python per row. The fields the rules read are looked up in
that VARIANT once per line (`_FIELDS_TYPE`): a lookup scans the object's keys, and each rule
reading its own `$.path` took 26 scans a line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from expo_platform.core.hours import event_hour_index

BEACON_TYPES = ("page_view", "add_to_cart", "order", "error")
REJECT_REASONS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
DUPLICATE = "duplicate"
LATE = "late"  # the speed layer's: valid, but behind its watermark
VALID = "valid"
BOM = "\ufeff"  # a byte-order mark before the JSON text is ignored
JSON_SPACE = " \t\r\n"  # JSON's whitespace (RFC 8259): a line of it only is blank

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


def _variants(*names: str) -> str:
    """The type of a struct of these fields, each a VARIANT."""
    return "struct<" + ",".join(f"{name}:variant" for name in names) + ">"


# The top-level fields of a beacon, read out of the parsed line in one lookup each (a cast to
# a struct of variants: an absent field, or a line that is not an object, gives NULL), and
# the fields of `order` and `perf`, read out of those the same way.
_FIELDS_TYPE = _variants(
    "event_id",
    "visitor_id",
    "session_id",
    "ts",
    "type",
    "page",
    "experiments",
    "order",
    "perf",
    "error",
)
_NESTED_TYPES = {
    "order": _variants("order_id", "revenue", "units"),
    "perf": _variants("page_load_ms"),
}


def _field(path: str) -> Column:
    """The value at a beacon path such as `$.ts` or `$.order.units`, from the fields
    `parse_beacons` looked up once (`_f`, `_order`, `_perf`); NULL when absent."""
    parts = path.removeprefix("$.").split(".")
    if len(parts) == 1:
        return F.col("_f")[parts[0]]
    parent, name = parts
    return F.col(f"_{parent}")[name]


def _field_kind(path: str) -> Column:
    """The JSON type of the value at a beacon path (see `_kind`)."""
    return F.schema_of_variant(_field(path))


def _field_as(path: str, sql_type: str) -> Column:
    """The value at a beacon path cast to `sql_type`; NULL when absent or not castable."""
    return F.try_variant_get(_field(path), "$", sql_type)


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


def _missing(kind: Column, text: Column) -> Column:
    """A required field is missing when absent, null or an empty string (METRICS.md 1)."""
    return _absent(kind) | ((kind == "STRING") & (text == ""))


def _string_status(kind: Column, text: Column) -> Column:
    """Status of a required non-empty string field, from its kind and its text."""
    return (
        F.when((kind == "STRING") & (text != ""), _OK)
        .when(_missing(kind, text), _MISSING)
        .otherwise(_BAD)
    )


def _ts_status(kind: Column, ts: Column) -> Column:
    """Status of `ts`: a JSON integer > 0."""
    return (
        F.when(_is_integer(kind) & (ts > 0), _OK)
        .when(_missing(kind, _field_as("$.ts", "string")), _MISSING)
        .otherwise(_BAD)
    )


def _type_status(kind: Column, text: Column) -> Column:
    """Status of `type`: one of BEACON_TYPES."""
    return (
        F.when((kind == "STRING") & text.isin(*BEACON_TYPES), _OK)
        .when(_missing(kind, text), _MISSING)
        .otherwise(_BAD)
    )


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


# The kinds of a well-typed `experiments` array: schema_of_variant merges its entries' fields,
# so one string comparison proves every entry's types; only the empty ids and variants are
# left to check. Anything else (an empty array, extra fields) takes the entry-by-entry check.
_TYPED_EXPERIMENTS_KINDS = tuple(
    f"ARRAY<OBJECT<id: STRING, {q}variant: STRING>>"
    for q in ("", "qualified: BOOLEAN, ", "qualified: VOID, ")
)


def _experiments_status(kind: Column, typed: Column) -> Column:
    """Status of `experiments`: absent, null or an array of well-formed entries."""
    non_empty = F.forall(typed, lambda x: (x["id"] != "") & (x["variant"] != ""))
    entries = _field_as("$.experiments", "array<variant>")
    return (
        F.when(_absent(kind), _OK)
        .when(kind.isin(*_TYPED_EXPERIMENTS_KINDS) & F.coalesce(non_empty, F.lit(False)), _OK)
        .when(~kind.startswith("ARRAY"), _BAD)
        .when(F.forall(entries, _experiment_ok), _OK)
        .otherwise(_BAD)
    )


def _order_status(beacon_type: Column) -> Column:
    """Status of `order`, required for order beacons: order_id, a finite revenue >= 0 and
    units >= 0.

    Reads the typed columns `_order_id`, `_revenue` and `_units` of `parse_beacons`.
    """
    order_id_kind = _leaf_kind("$.order.order_id")
    revenue_kind, units_kind = _leaf_kind("$.order.revenue"), _leaf_kind("$.order.units")
    # A string order_id implies `order` is an object.
    well_formed = (
        (order_id_kind == "STRING")
        & (F.col("_order_id") != "")
        & _is_number(revenue_kind)
        & (F.col("_revenue") >= 0)
        & (F.col("_revenue") < F.lit(float("inf")))  # 1e999 parses, as infinity
        & _is_integer(units_kind)
        & (F.col("_units") >= 0)
    )
    kind = _field_kind("$.order")
    return (
        F.when(F.coalesce(beacon_type != "order", F.lit(True)), _OK)
        .when(F.coalesce(well_formed, F.lit(False)), _OK)
        .when(_missing(kind, _field_as("$.order", "string")), _MISSING)
        .otherwise(_BAD)
    )


def _perf_status(page_load_ms: Column) -> Column:
    """Status of `perf`: optional object; `page_load_ms`, when present, an integer >= 0."""
    kind, load_kind = _field_kind("$.perf"), _leaf_kind("$.perf.page_load_ms")
    return (
        F.when(_is_integer(load_kind) & (page_load_ms >= 0), _OK)
        .when(_absent(kind), _OK)
        .when(~kind.startswith("OBJECT"), _BAD)
        .when(_absent(load_kind), _OK)
        .otherwise(_BAD)
    )


def _first_experiments(entries: Column) -> Column:
    """Keep the first entry of each experiment id: a beacon listing `e` twice counts it once."""
    return F.filter(
        entries,
        lambda x, i: F.array_position(F.transform(entries, lambda y: y["id"]), x["id"]) == i + 1,
    )


def _experiments(typed: Column) -> Column:
    """The beacon's experiments; exact for every valid beacon, whose entries are well-typed."""
    entries = F.transform(
        F.coalesce(typed, F.array().cast(EXPERIMENTS_TYPE)),
        lambda x: F.struct(
            x["id"].alias("id"),
            x["variant"].alias("variant"),
            F.coalesce(x["qualified"], F.lit(False)).alias("qualified"),
        ),
    )
    return _first_experiments(entries)


def _first_field_with(status: int, statuses: dict[str, Column]) -> Column:
    return F.coalesce(*[F.when(s == status, F.lit(name)) for name, s in statuses.items()])


def is_blank(value_col: str = "value") -> Column:
    """Whether a line is blank (or null): blank lines are not beacons, neither counted nor
    rejected. Blank means JSON whitespace only: a no-break space is text, hence malformed.
    A line that starts with `{`, nearly every one, is not blank without a trim."""
    line = F.col(value_col)
    blank = F.when(line.startswith("{"), F.lit(False)).otherwise(
        F.trim(line, F.lit(JSON_SPACE)) == ""
    )
    return F.coalesce(blank, F.lit(True))


def drop_blank_lines(lines: DataFrame, value_col: str = "value") -> DataFrame:
    """The lines that are not blank (`is_blank`)."""
    return lines.where(~is_blank(value_col))


def parse_beacons(lines: DataFrame, value_col: str = "value") -> DataFrame:
    """Parse raw beacon lines into typed columns plus `reason` and `detail` (null when valid).

    The output keeps every input column, renames the text to `raw` and adds BEACON_COLUMNS.
    `reason` is the first rejection rule that applies (malformed_json, missing_field,
    bad_field); `wrong_partition` needs the landing hour: see `check_partition`.

    Each value is read once into its typed column. The checks of a well-formed beacon then
    compare kinds and typed values; the slower entry-by-entry checks run only when those fail.
    """
    # JSON text is UTF-8 (RFC 8259): a line that is not is rejected, not parsed with its bad
    # bytes replaced (which would merge distinct ids).
    parsed = lines.withColumnRenamed(value_col, "raw").withColumn(
        "_utf8", F.is_valid_utf8(F.col("raw"))
    )
    # A byte-order mark before the JSON text is ignored (RFC 8259 allows it): Hadoop's line
    # reader already drops one at the start of a file, and a Kafka message may carry one.
    text = F.when(F.col("raw").startswith(BOM), F.substring(F.col("raw"), 2, 2**31 - 1)).otherwise(
        F.col("raw")
    )
    parsed = parsed.withColumn("_text", text)
    parsed = parsed.withColumn("_v", F.when(F.col("_utf8"), F.try_parse_json(F.col("_text"))))
    v = F.col("_v")
    parsed = parsed.withColumn("_f", F.try_variant_get(v, "$", _FIELDS_TYPE))
    parsed = parsed.withColumns(
        {
            f"_{name}": F.try_variant_get(_field(f"$.{name}"), "$", t)
            for name, t in _NESTED_TYPES.items()
        }
    )
    # Extraction never fails: a field of the wrong type reads as null or as its cast, and
    # such a beacon is rejected below; its event_id and ts still help find it in quarantine.
    typed = {
        "event_id": _field_as("$.event_id", "string"),
        "visitor_id": _field_as("$.visitor_id", "string"),
        "session_id": _field_as("$.session_id", "string"),
        "ts": _field_as("$.ts", "bigint"),
        "type": _field_as("$.type", "string"),
        "page": _field_as("$.page", "string"),
        "_experiments": _field_as("$.experiments", EXPERIMENTS_TYPE),
        "_k_experiments": _field_kind("$.experiments"),
        "page_load_ms": _field_as("$.perf.page_load_ms", "bigint"),
        # The value as JSON text, kept as it came.
        "error": F.to_json(_field("$.error")),
        # Read whatever the type; they count only for a valid order beacon.
        "_order_id": _field_as("$.order.order_id", "string"),
        "_revenue": _field_as("$.order.revenue", "double"),
        "_units": _field_as("$.order.units", "bigint"),
    }
    kinds = {_kind_column(path): _field_kind(path) for path in _LEAF_PATHS}
    parsed = parsed.withColumns({**typed, **kinds})
    col = F.col
    # Checked in this order, so the detail names the first field that breaks the rule.
    statuses = {
        "event_id": _string_status(_leaf_kind("$.event_id"), col("event_id")),
        "visitor_id": _string_status(_leaf_kind("$.visitor_id"), col("visitor_id")),
        "session_id": _string_status(_leaf_kind("$.session_id"), col("session_id")),
        "ts": _ts_status(_leaf_kind("$.ts"), col("ts")),
        "type": _type_status(_leaf_kind("$.type"), col("type")),
        "order": _order_status(col("type")),
        "experiments": _experiments_status(col("_k_experiments"), col("_experiments")),
        "perf": _perf_status(col("page_load_ms")),
    }
    parsed = parsed.withColumns({f"_s_{name}": status for name, status in statuses.items()})
    statuses = {name: col(f"_s_{name}") for name in statuses}
    # A line whose event_id is found is an object; otherwise its text must start with `{`.
    is_object = v.isNotNull() & (
        _leaf_kind("$.event_id").isNotNull() | col("_text").rlike(r"^[ \t\r\n]*\{")
    )
    status_list = F.array(*statuses.values())
    reason = (
        F.when(~is_object, F.lit("malformed_json"))
        .when(F.array_contains(status_list, _MISSING), F.lit("missing_field"))
        .when(F.array_contains(status_list, _BAD), F.lit("bad_field"))
    )
    detail = (
        F.when(~col("_utf8"), F.lit("not valid UTF-8"))
        .when(~is_object, F.lit("not a JSON object"))
        .when(reason == "missing_field", _first_field_with(_MISSING, statuses))
        .when(reason == "bad_field", _first_field_with(_BAD, statuses))
    )
    # `order` is ignored unless the beacon is an order.
    is_order = col("type") == "order"
    out = parsed.withColumns(
        {
            "experiments": _experiments(col("_experiments")),
            "order_id": F.when(is_order, col("_order_id")),
            "revenue": F.when(is_order, col("_revenue")),
            "units": F.when(is_order, col("_units")),
            "reason": reason,
            "detail": detail,
            # The quarantine keeps a line that is not UTF-8 readable: bad bytes become U+FFFD.
            "raw": F.when(col("_utf8"), col("raw")).otherwise(F.make_valid_utf8(col("raw"))),
        }
    )
    helpers = ["_utf8", "_text", "_v", "_f", *[f"_{name}" for name in _NESTED_TYPES]]
    helpers += ["_experiments", "_k_experiments", "_order_id", "_revenue", "_units"]
    return out.drop(*helpers, *kinds, *[f"_s_{name}" for name in statuses])


def check_partition(beacons: DataFrame, hour_index: int) -> DataFrame:
    """Reject, as `wrong_partition`, valid beacons whose ts lies outside the landing hour."""
    outside = F.col("reason").isNull() & (event_hour_index("ts") != F.lit(hour_index))
    return beacons.withColumns(
        {
            "reason": F.when(outside, F.lit("wrong_partition")).otherwise(F.col("reason")),
            "detail": F.when(outside, F.lit("ts outside the landing hour")).otherwise(
                F.col("detail")
            ),
        }
    )


def mark_duplicates(beacons: DataFrame, *within: str) -> DataFrame:
    """Mark valid beacons that repeat an `event_id`: only the first by (ts, raw) counts.

    Ties in ts are broken by the raw text, so the result does not depend on file order.
    `within` names columns that set the beacons compared apart (the stream's event hour:
    the batch layer compares the beacons of one landing hour).
    """
    valid = F.col("reason").isNull()
    # Rejected lines rank apart: only valid beacons compete for being the first.
    order = Window.partitionBy("event_id", valid, *within).orderBy("ts", "raw")
    rank = F.row_number().over(order)
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


def quality_metrics(
    reasons: Sequence[str] = REJECT_REASONS, *, late: bool = False
) -> tuple[str, ...]:
    """The data-quality metrics of a layer that rejects for `reasons` (METRICS.md, Data
    quality); the speed layer also counts its `late` beacons."""
    return (
        "beacons_total",
        "beacons_valid",
        "beacons_duplicate",
        *(("beacons_late",) if late else ()),
        *(f"beacons_rejected_{r}" for r in reasons),
    )


QUALITY_METRICS = quality_metrics()


def _quality_metric(reason: str | None) -> str:
    """The data-quality metric that counts a line with this reason (None: counted)."""
    named = {None: "beacons_valid", DUPLICATE: "beacons_duplicate", LATE: "beacons_late"}
    return named.get(reason) or f"beacons_rejected_{reason}"


def quality_counts(
    by_reason: Mapping[str | None, int], metrics: Sequence[str] = QUALITY_METRICS
) -> dict[str, int]:
    """The data-quality counts of one hour from its lines counted per reason: None for the
    counted beacons, DUPLICATE, LATE (the speed layer) or a reason of REJECT_REASONS.

    Every metric of `metrics` is present (0 when no line has its reason); `beacons_total` is
    every line. Both layers call this with the counts they have.
    """
    counts = dict.fromkeys(metrics, 0)
    for reason, n in by_reason.items():
        metric = _quality_metric(reason)
        if metric not in counts:
            raise ValueError(f"no data-quality metric among {metrics} counts reason {reason!r}")
        counts[metric] += n
    counts["beacons_total"] = sum(by_reason.values())
    return counts


def reason_counts(lines: DataFrame) -> dict[str | None, int]:
    """How many lines have each `reason` (None for the counted beacons)."""
    rows = lines.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()
    return {row["reason"]: row["n"] for row in rows}
