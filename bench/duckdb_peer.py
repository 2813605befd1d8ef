"""An independent DuckDB SQL implementation of docs/metrics.md sections 1 to 4, for one hour.

It reads the same landing files as the batch layer and shares no code with it (only the
names of the metrics): it is both the strongest single-machine peer for the throughput
figures and a cross-check of the metrics. It uses every landing file it is given: hour H
and hour H+1 in the benchmark (a bounce needs the next 35 minutes); a visit from an earlier
hour is carried into H when that hour's files are given too.

Each line is read once, and no Python runs per row:

- **Lines.** `read_csv` splits the files into lines (at `\\n`, `\\r\\n` or `\\r`) with no
  quoting and a delimiter that JSON text never holds unescaped (US, 0x1f): a line holding
  one is malformed, and the second column shows it. A line that is not valid UTF-8 cannot
  be a DuckDB string: the reader skips it and records it in its rejects table (such a line
  is `malformed_json`, never a beacon).
- **The common path: one typed parse.** A line that starts with `{`, ends with `}` and
  holds no backslash is cast once, by `from_json`, into a struct with every field of a
  beacon (`experiments` as its compact JSON text). DuckDB's typed JSON reading is lenient:
  it casts `123` into a string, `17.0` into an integer, and keeps the first of two
  repeated keys. So the typed row is used only where it provably is the line: written back
  as compact JSON, member by member, it is the line itself (in the order the project's
  producers write the keys), or, in any order, each member is in the line, followed by `,`
  or the closing `}`, and the line is exactly as long as `{`, those members and their
  separators. Then the line is a compact JSON object of exactly those members: no other
  key, no repeated key, no whitespace, no value of another type, no `NaN`. The few
  distinct experiments lists are checked once each: a list is taken only when it is the
  compact JSON of its typed entries. 99.4% of the bench hour's lines take this path, and
  a line's text is kept only where it is not its typed row written back in order (for
  the fallback and for de-duplication ties): 0.7% of them.
- **The fallback: the rules field by field**, for every other line (docs/metrics.md,
  "Hostile text"), with DuckDB's JSON functions where they agree with RFC 8259 and explicit
  checks where they do not. A byte-order mark is dropped; a line is `malformed_json` when
  it does not parse, or holds a trailing comma, `NaN` or `Infinity` (DuckDB's parser
  accepts these), a repeated key at any depth (`json_tree`) or nesting deeper than 1,000
  levels. Then `missing_field`, `bad_field` and `wrong_partition` by the JSON types of the
  fields: a fraction or an exponent is not an integer, and an integer beyond 64 bits reads
  as a double or as an unsigned integer above 2^63 - 1.

Then de-duplication (per landing hour and `event_id`, the first by `ts`, then raw text),
visits (windows over each session ordered by `(ts, event_id)`; the rare runs of 12 hours or
more are cut by a recursive query) and the hour's metrics, summed per distinct experiments
list first and then per population. DuckDB runs on a bounded number of threads, with a
memory limit, and spills to a temporary folder beyond it.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from expo_platform.core.metrics import EXPERIMENT_METRICS

HOUR_MS = 3_600_000
GAP_MS = 2_100_000  # a longer gap between two beacons of a session starts a new visit
VISIT_MAX_MS = 43_200_000  # a beacon this long after a visit's first starts a new visit
DAY_HOURS = 24  # visitors_24h counts [H - 23h, H + 1h)
MAX_DEPTH = 1_000  # the deepest nesting a line may have
# The metric columns the SQL below computes: every metric of an experiment hour.
METRICS = EXPERIMENT_METRICS
TYPES = ("page_view", "add_to_cart", "order", "error")
REASONS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
MEMORY_LIMIT = "2GB"  # DuckDB spills to a temporary folder beyond it
MAX_LINE_BYTES = 16 * 2**20  # a longer line stops the run (it is not skipped)
# A line of at most 2 x MAX_DEPTH bytes cannot nest deeper than MAX_DEPTH: the common path
# takes only those.
FAST_MAX_BYTES = 2 * MAX_DEPTH
INT64_MAX = 2**63 - 1

_TYPES = "(" + ", ".join(f"'{t}'" for t in TYPES) + ")"
# A JSON number (RFC 8259): no NaN or Infinity, no leading zero, no bare fraction.
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_KEYS = (
    "event_id",
    "visitor_id",
    "session_id",
    "ts",
    "type",
    "page",
    "experiments",
    "perf",
    "order",
    "error",
)
# `error` holds any JSON value (kept, never a reason). The common path takes only a plain
# one, as DuckDB writes it back: a scalar, an array of scalars, or an object of one key (no
# key can repeat) that is none of the beacon's own keys (no member of the line hides in it).
_STRING = r'"[^"\\\x00-\x1f]*"'
_SCALAR = rf"({_STRING}|{_NUMBER}|true|false|null)"
_PLAIN = rf"({_SCALAR}|\[({_SCALAR}(,{_SCALAR})*)?\]|\{{{_STRING}:{_SCALAR}\}})"
_OWN_KEY = '"(' + "|".join(_KEYS) + ')":'
_ENTRY = '{"id": "VARCHAR", "variant": "VARCHAR", "qualified": "BOOLEAN"}'
_ENTRIES = f"[{_ENTRY}]"
_STRUCT = (
    '{"event_id": "VARCHAR", "visitor_id": "VARCHAR", "session_id": "VARCHAR",'
    ' "ts": "BIGINT", "type": "VARCHAR", "page": "VARCHAR", "experiments": "JSON",'
    ' "perf": {"page_load_ms": "BIGINT"},'
    ' "order": {"order_id": "VARCHAR", "revenue": "JSON", "units": "BIGINT"},'
    ' "error": "JSON"}'
)


def _q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ok(condition: str) -> str:
    """A condition that holds (NULL counts as false)."""
    return f"coalesce({condition}, false)"


def _hour_of_file(path: Path) -> int:
    """Hours since the epoch of the landing folder `hour=YYYY-MM-DD-HH` holding the file."""
    found = re.findall(r"hour=(\d{4})-(\d{2})-(\d{2})-(\d{2})", str(path))
    if not found:
        raise ValueError(f"not in a landing hour folder: {path}")
    moment = datetime(*(int(g) for g in found[-1]), tzinfo=UTC)
    return int(moment.timestamp()) // 3600


def _read(sources: list[tuple[int, Path]]) -> str:
    """Every line of the files (each with its landing hour); `rest` is not NULL when the
    line holds the delimiter. A blank line (JSON whitespace only) is no beacon."""
    reads = [
        f"""SELECT {hour}::BIGINT AS file_hour, line AS raw, rest
        FROM read_csv({_q(str(path))}, columns = {{'line': 'VARCHAR', 'rest': 'VARCHAR'}},
                      header = false, delim = chr(31), quote = '', escape = '',
                      new_line = '\\n', auto_detect = false, strict_mode = false,
                      null_padding = true, nullstr = chr(10),
                      ignore_errors = true, store_rejects = true,
                      rejects_table = 'rejects_{i}', rejects_scan = 'reject_scans_{i}',
                      max_line_size = {MAX_LINE_BYTES})"""
        for i, (hour, path) in enumerate(sources)
    ]
    return f"""(SELECT * FROM ({" UNION ALL ".join(reads)})
        WHERE CASE WHEN rest IS NOT NULL THEN true WHEN raw IS NULL THEN false
                   WHEN prefix(raw, '{{') THEN true ELSE trim(raw, ' ' || chr(9)) <> '' END)"""


def _sources(files: list[Path], spill: Path) -> list[tuple[int, Path]]:
    """(landing hour, file to read) per landing file. DuckDB's reader drops a byte-order
    mark at the very start of a file, where the rules only ignore one before the JSON
    text: such a file (rare) is read from a copy that starts with an empty line."""
    sources = []
    for i, path in enumerate(files):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            bom = f.read(3) == b"\xef\xbb\xbf"
        if bom:
            copy = spill / f"bom-{i}-{path.name.removesuffix('.gz')}"
            with opener(path, "rb") as f, copy.open("wb") as out:
                out.write(b"\n")
                shutil.copyfileobj(f, out)
            path = copy
        sources.append((_hour_of_file(files[i]), path))
    return sources


# -- the common path ---------------------------------------------------------------------------


def _written_back(t: str = "") -> str:
    """A line written back as compact JSON, its keys in the order the project's producers
    write them, from the columns of its typed row (of table `t`; `list` is the experiments'
    JSON text). A NULL value breaks its member, so the text cannot be the line."""
    return f"""concat('{{"event_id":"', {t}event_id, '","visitor_id":"', {t}visitor_id,
        '","session_id":"', {t}session_id, '","ts":', {t}ts, ',"type":"', {t}type,
        '","page":"', {t}page, '","experiments":', {t}list,
        CASE WHEN {t}page_load_ms IS NOT NULL
             THEN ',"perf":{{"page_load_ms":' || {t}page_load_ms || '}}' END,
        ',' || {t}m_order, ',' || {t}m_error, '}}')"""


def _text(t: str = "") -> str:
    """A line's text: kept only where it is not its typed row written back."""
    return f"coalesce({t}raw, {_written_back(t)})"


def _string_member(key: str) -> str:
    return f"""'"{key}":"' || t.{key} || '"'"""


# Per key, its compact JSON member written back from the typed value: NULL when the key is
# absent, or when its value cannot be written back (a revenue that is no number, an
# `error` that is not plain). `to_json` writes a NULL field of an order as `null`.
_MEMBERS = {
    "event_id": _string_member("event_id"),
    "visitor_id": _string_member("visitor_id"),
    "session_id": _string_member("session_id"),
    "ts": """'"ts":' || t.ts""",
    "type": _string_member("type"),
    "page": _string_member("page"),
    "experiments": """'"experiments":' || t.experiments""",
    "perf": """'"perf":{"page_load_ms":' || t.perf.page_load_ms || '}'""",
    "order": "m_order",
    "error": "m_error",
}
_M_ORDER = f"""CASE WHEN regexp_full_match(t.order.revenue::VARCHAR, {_q(_NUMBER)})
    THEN '"order":' || to_json(t.order) END"""
_M_ERROR = f"""CASE WHEN regexp_full_match(t.error::VARCHAR, {_q(_PLAIN)})
                   AND NOT regexp_matches(t.error::VARCHAR, {_q(_OWN_KEY)})
    THEN '"error":' || t.error END"""
assert tuple(_MEMBERS) == _KEYS

# In any order: each member of the typed row is in the line whole (followed by `,` or the
# closing `}`), and the line is exactly as long as `{`, the members and the separators.
_COMMA, _CLOSE = "','", "'}'"
_ANY_ORDER = (
    " AND ".join(
        f"(t.{key} IS NULL"
        f" OR {_ok(f'contains(raw, {m} || {_COMMA}) OR suffix(raw, {m} || {_CLOSE})')})"
        for key, m in _MEMBERS.items()
    )
    + " AND strlen(raw) = 1 + "
    + " + ".join(
        f"CASE WHEN t.{key} IS NULL THEN 0 ELSE strlen({m}) + 1 END" for key, m in _MEMBERS.items()
    )
)

# The reason of a line on the common path from its typed values, but for its experiments
# list (checked once per distinct list); NULL for a beacon.
_REVENUE_FAST = "TRY_CAST(t.order.revenue::VARCHAR AS DOUBLE)"
_ORDER_OK = _ok(
    f"t.order.order_id <> '' AND isfinite({_REVENUE_FAST}) AND {_REVENUE_FAST} >= 0"
    " AND t.order.units >= 0"
)
_FAST_REASON = f"""CASE
    WHEN coalesce(t.event_id, '') = '' OR coalesce(t.visitor_id, '') = ''
         OR coalesce(t.session_id, '') = '' OR t.ts IS NULL OR coalesce(t.type, '') = ''
         OR (t.type = 'order' AND t.order IS NULL) THEN 'missing_field'
    WHEN t.ts <= 0 OR t.type NOT IN {_TYPES} THEN 'bad_field'
    WHEN t.type = 'order' AND NOT {_ORDER_OK} THEN 'bad_field'
    WHEN t.perf.page_load_ms < 0 THEN 'bad_field'
    WHEN t.ts // {HOUR_MS} <> file_hour THEN 'wrong_partition'
END"""


# -- the fallback ------------------------------------------------------------------------------

_PATHS = (
    "$.event_id",
    "$.visitor_id",
    "$.session_id",
    "$.ts",
    "$.type",
    "$.order",
    "$.order.order_id",
    "$.order.revenue",
    "$.order.units",
    "$.experiments",
    "$.perf",
    "$.perf.page_load_ms",
)


def _ty(path: str) -> str:
    """The JSON type of a field (NULL when absent), from one parse for every path."""
    return f"ty[{_PATHS.index(path) + 1}]"


def _tx(path: str) -> str:
    """The field as text: a string's value, a number's token."""
    return f"tx[{_PATHS.index(path) + 1}]"


def _int64(path: str) -> str:
    """The field is a JSON integer (no fraction, no exponent) within 64 bits."""
    return (
        f"({_ty(path)} = 'BIGINT' OR ({_ty(path)} = 'UBIGINT'"
        f" AND TRY_CAST({_tx(path)} AS UBIGINT) <= {INT64_MAX}))"
    )


def _missing(path: str) -> str:
    """Absent, null or the empty string."""
    return (
        f"({_ty(path)} IS NULL OR {_ty(path)} = 'NULL'"
        f" OR ({_ty(path)} = 'VARCHAR' AND {_tx(path)} = ''))"
    )


def _absent(path: str) -> str:
    """Absent or null."""
    return f"coalesce({_ty(path)}, 'NULL') = 'NULL'"


_IS_ORDER = f"({_ty('$.type')} = 'VARCHAR' AND {_tx('$.type')} = 'order')"
_ENTRY_OK = """(json_type(x) = 'OBJECT'
    AND json_type(x, '$.id') = 'VARCHAR' AND json_extract_string(x, '$.id') <> ''
    AND json_type(x, '$.variant') = 'VARCHAR' AND json_extract_string(x, '$.variant') <> ''
    AND coalesce(json_type(x, '$.qualified'), 'NULL') IN ('NULL', 'BOOLEAN'))"""
_REVENUE = f"TRY_CAST({_tx('$.order.revenue')} AS DOUBLE)"
_SLOW_RULES = (  # (reason, what holds unless the line has that reason), in order
    ("malformed_json", "well_formed"),
    (
        "missing_field",
        f"""NOT ({" OR ".join(_missing(p) for p in _PATHS[:5])}
                 OR ({_IS_ORDER} AND {_missing("$.order")}))""",
    ),
    (
        "bad_field",
        f"""{_ty("$.event_id")} = 'VARCHAR' AND {_ty("$.visitor_id")} = 'VARCHAR'
            AND {_ty("$.session_id")} = 'VARCHAR'
            AND {_int64("$.ts")} AND TRY_CAST({_tx("$.ts")} AS BIGINT) > 0
            AND {_ty("$.type")} = 'VARCHAR' AND {_tx("$.type")} IN {_TYPES}""",
    ),
    (
        "bad_field",
        f"""NOT {_IS_ORDER} OR ({_ty("$.order")} = 'OBJECT'
            AND {_ty("$.order.order_id")} = 'VARCHAR' AND {_tx("$.order.order_id")} <> ''
            AND {_ty("$.order.revenue")} IN ('UBIGINT', 'BIGINT', 'DOUBLE')
            AND isfinite({_REVENUE}) AND {_REVENUE} >= 0
            AND {_int64("$.order.units")} AND TRY_CAST({_tx("$.order.units")} AS BIGINT) >= 0)""",
    ),
    (
        "bad_field",
        f"""{_absent("$.experiments")} OR ({_ty("$.experiments")} = 'ARRAY'
            AND list_bool_and(list_transform(
                    from_json(json_extract(text, '$.experiments'), '["JSON"]'),
                    lambda x: {_ok(_ENTRY_OK)})) IS NOT false)""",
    ),
    (
        "bad_field",
        f"""{_absent("$.perf")} OR ({_ty("$.perf")} = 'OBJECT'
            AND ({_absent("$.perf.page_load_ms")} OR ({_int64("$.perf.page_load_ms")}
                 AND TRY_CAST({_tx("$.perf.page_load_ms")} AS BIGINT) >= 0)))""",
    ),
    ("wrong_partition", f"TRY_CAST({_tx('$.ts')} AS BIGINT) // {HOUR_MS} = file_hour"),
)
_SLOW_REASON = (
    "CASE "
    + " ".join(f"WHEN NOT {_ok(rule)} THEN '{reason}'" for reason, rule in _SLOW_RULES)
    + " END"
)
# The text with every string emptied: the structure, where trailing commas, NaN and
# Infinity (DuckDB's parser accepts all three) and the nesting show.
_SKELETON = r"""regexp_replace(text, '"(?:[^"\\]|\\.)*"', '""', 'g')"""
# An experiment listed twice counts once, at its first entry.
_FIRST_ENTRIES = """CASE WHEN len(x) < 2
        OR len(list_distinct(list_transform(x, lambda e: e.id))) = len(x) THEN x
    ELSE list_filter(x, lambda e, i: list_position(list_transform(x, lambda f: f.id), e.id) = i)
    END"""


def _statements(sources: list[tuple[int, Path]], hour_index: int) -> list[str | tuple[str, str]]:
    """The SQL, in order. A (condition, statement) pair runs only when the condition, a
    query, returns true."""
    start, end = hour_index * HOUR_MS, (hour_index + 1) * HOUR_MS
    day_start = start - (DAY_HOURS - 1) * HOUR_MS
    in_hour = f"ts >= {start} AND ts < {end}"
    return [
        # The common path: one typed parse, kept where it provably is the line.
        f"""CREATE TEMP TABLE lines AS
        WITH parsed AS (
            SELECT file_hour, raw, rest,
                   CASE WHEN rest IS NULL AND prefix(raw, '{{') AND suffix(raw, '}}')
                             AND strlen(raw) <= {FAST_MAX_BYTES} AND NOT contains(raw, '\\')
                        THEN try(from_json(raw, {_q(_STRUCT)})) END AS t
            FROM {_read(sources)}
        ), fields AS (
            SELECT *, t.event_id, t.visitor_id, t.session_id, t.ts, t.type, t.page,
                   coalesce(t.experiments::VARCHAR, '[]') AS list,
                   t.perf.page_load_ms AS page_load_ms,
                   {_M_ORDER} AS m_order, {_M_ERROR} AS m_error
            FROM parsed
        ), checked AS (
            SELECT *, t IS NOT NULL AND raw = {_written_back()} AS in_order FROM fields
        ), kept AS (
            SELECT *, CASE WHEN t IS NULL THEN false WHEN in_order THEN true
                           ELSE {_ok(_ANY_ORDER)} END AS fast
            FROM checked
        )
        SELECT file_hour, CASE WHEN NOT in_order THEN raw END AS raw, rest, fast,
               {_FAST_REASON} AS reason, event_id, visitor_id, session_id, ts, type, page,
               CASE WHEN t.type = 'order' THEN t.order.order_id END AS order_id,
               CASE WHEN t.type = 'order' THEN {_REVENUE_FAST} END AS revenue,
               CASE WHEN t.type = 'order' THEN t.order.units END AS units,
               page_load_ms, list, hash(list) AS list_id, m_order, m_error
        FROM kept""",
        # The distinct experiments lists of the common path. A list is taken only when it
        # is the compact JSON of its typed entries (no repeated key, no other key or type);
        # the lines of any other list go to the fallback.
        f"""CREATE TEMP TABLE lists AS
        WITH distinct_lists AS (
            SELECT list_id, min(list) AS list, min(list) <> max(list) AS collides
            FROM lines WHERE fast GROUP BY ALL
        )
        SELECT *, {_ok(f"to_json(from_json(list, {_q(_ENTRIES)}))::VARCHAR = list")} AS exact,
               list_bool_and(list_transform(from_json(list, {_q(_ENTRIES)}),
                   lambda e: coalesce(e.id <> '' AND e.variant <> '', false))) IS NOT false
                 AS good
        FROM distinct_lists""",
        (
            "SELECT count(*) > 0 FROM lists WHERE NOT exact",
            """UPDATE lines SET fast = false
            WHERE fast AND list_id IN (SELECT list_id FROM lists WHERE NOT exact)""",
        ),
        # The fallback, for the lines the common path left.
        f"""CREATE TEMP TABLE slow AS
        WITH l0 AS (
            SELECT rowid AS line_id, file_hour, {_text()} AS raw, rest
            FROM lines WHERE NOT fast
        ), l AS (
            SELECT *, CASE WHEN starts_with(raw, chr(65279)) THEN raw[2:] ELSE raw END AS text
            FROM l0
        ), parsed AS (
            SELECT *, CASE WHEN rest IS NULL AND json_valid(text)
                           THEN json_type(text) = 'OBJECT' ELSE false END AS parses
            FROM l
        ), bare AS (
            SELECT *, CASE WHEN parses THEN {_SKELETON} END AS skeleton FROM parsed
        )
        SELECT line_id, file_hour, raw, text,
               parses AND NOT regexp_matches(skeleton, '[,][ \t\r\n]*[]}}]')
                      AND NOT regexp_matches(
                              regexp_replace(skeleton, 'true|false|null', '', 'g'),
                              '[A-Za-df-z]') AS well_formed,
               parses AND strlen(skeleton)
                          - strlen(replace(replace(skeleton, '[', ''), '{{', '')) > {MAX_DEPTH}
                 AS maybe_deep
        FROM bare""",
        # A repeated key at any depth: two members of one object with one (unescaped) name.
        """UPDATE slow SET well_formed = false WHERE line_id IN (
            SELECT s.line_id FROM slow s, json_tree(s.text) j
            WHERE s.well_formed AND j.key IS NOT NULL
            GROUP BY s.line_id, j.parent, j.key HAVING count(*) > 1)""",
        # Nesting deeper than MAX_DEPTH (only lines with that many opening brackets).
        (
            "SELECT count(*) > 0 FROM slow WHERE well_formed AND maybe_deep",
            f"""UPDATE slow SET well_formed = false WHERE line_id IN (
            WITH brackets AS (
                SELECT line_id, string_split(regexp_replace({_SKELETON},
                           '[^][{{}}]', '', 'g'), '') AS b
                FROM slow WHERE well_formed AND maybe_deep
            ), steps AS (
                SELECT line_id, unnest(b) AS c, generate_subscripts(b, 1) AS i FROM brackets
            ), depth AS (
                SELECT line_id, sum(CASE WHEN c IN ('[', '{{') THEN 1 ELSE -1 END)
                           OVER (PARTITION BY line_id ORDER BY i) AS depth
                FROM steps
            )
            SELECT line_id FROM depth GROUP BY line_id HAVING max(depth) > {MAX_DEPTH})""",
        ),
        f"""CREATE TEMP TABLE slow_reasons AS
        WITH typed AS (
            SELECT *, CASE WHEN well_formed THEN json_type(text, {list(_PATHS)}) END AS ty,
                      CASE WHEN well_formed THEN json_extract_string(text, {list(_PATHS)}) END
                        AS tx
            FROM slow
        )
        SELECT line_id, file_hour, raw, text, ty, tx, {_SLOW_REASON} AS reason FROM typed""",
        # Valid beacons of the fallback, their experiments lists written as on the common
        # path (compact JSON) and added to the lists.
        f"""CREATE TEMP TABLE slow_beacons AS
        SELECT line_id, file_hour, {_tx("$.event_id")} AS event_id,
               {_tx("$.visitor_id")} AS visitor_id, {_tx("$.session_id")} AS session_id,
               TRY_CAST({_tx("$.ts")} AS BIGINT) AS ts, {_tx("$.type")} AS type,
               CASE WHEN {_IS_ORDER} THEN {_tx("$.order.order_id")} END AS order_id,
               CASE WHEN {_IS_ORDER} THEN {_REVENUE} END AS revenue,
               CASE WHEN {_IS_ORDER} THEN TRY_CAST({_tx("$.order.units")} AS BIGINT) END
                 AS units,
               CASE WHEN {_ty("$.perf.page_load_ms")} IN ('UBIGINT', 'BIGINT')
                    THEN TRY_CAST({_tx("$.perf.page_load_ms")} AS BIGINT) END AS page_load_ms,
               coalesce(to_json(from_json(json_extract(text, '$.experiments'),
                                          {_q(_ENTRIES)}))::VARCHAR, '[]') AS list
        FROM slow_reasons WHERE reason IS NULL""",
        """INSERT INTO lists
        SELECT s.list_id, s.list, s.collides, true, true FROM (
            SELECT hash(list) AS list_id, min(list) AS list, min(list) <> max(list) AS collides
            FROM slow_beacons GROUP BY ALL
        ) s ANTI JOIN lists l ON s.list_id = l.list_id AND s.list = l.list""",
        # Each list's populations (an experiment listed twice counts once, at its first
        # entry), numbered.
        f"""CREATE TEMP TABLE list_populations AS
        WITH entries AS (
            SELECT list_id, from_json(list, {_q(_ENTRIES)}) AS x FROM lists WHERE exact AND good
        ), firsts AS (SELECT list_id, unnest({_FIRST_ENTRIES}) AS e FROM entries)
        SELECT list_id, e.id AS experiment, e.variant AS variant, 'assigned' AS population
        FROM firsts
        UNION ALL
        SELECT list_id, e.id, e.variant, 'qualified' FROM firsts WHERE e.qualified""",
        """CREATE TEMP TABLE populations AS
        SELECT row_number() OVER () AS key_id, * FROM (
            SELECT DISTINCT experiment, variant, population FROM list_populations)""",
        """CREATE TEMP TABLE list_keys AS
        SELECT list_id, key_id FROM list_populations
        JOIN populations USING (experiment, variant, population)""",
        # Valid beacons of both paths.
        """CREATE TEMP VIEW beacons AS
        SELECT rowid AS line_id, file_hour, event_id, visitor_id, session_id, ts, type,
               order_id, revenue, units, page_load_ms, list_id
        FROM lines
        WHERE fast AND reason IS NULL
              AND list_id NOT IN (SELECT list_id FROM lists WHERE NOT good)
        UNION ALL
        SELECT * EXCLUDE (list), hash(list) FROM slow_beacons""",
        # Per landing hour and event_id, the first valid beacon by ts, then raw text; the
        # others are duplicates.
        f"""CREATE TEMP TABLE duplicates AS
        WITH repeated AS (
            SELECT file_hour, event_id FROM beacons GROUP BY ALL HAVING count(*) > 1
        )
        SELECT b.line_id FROM beacons b
        SEMI JOIN repeated r ON b.file_hour = r.file_hour AND b.event_id = r.event_id
        JOIN lines l ON l.rowid = b.line_id
        QUALIFY row_number() OVER (PARTITION BY b.file_hour, b.event_id
                                   ORDER BY b.ts, {_text("l.")}) > 1""",
        # Visits: a session's beacons by (ts, event_id); a gap of more than 35 minutes
        # starts a run, and a run is one visit unless it lasts 12 hours or more. A session
        # that lasts 35 minutes or less is one visit; the others are walked again below.
        f"""CREATE TEMP TABLE visited AS
        WITH counted AS (
            SELECT line_id, event_id, visitor_id, session_id, ts, type, page_load_ms, list_id
            FROM beacons ANTI JOIN duplicates USING (line_id)
        ), neighbours AS (
            SELECT *, lag(ts) OVER w AS prev_ts, lead(ts) OVER w AS next_ts,
                   first_value(ts) OVER whole AS session_first,
                   last_value(ts) OVER whole AS session_last
            FROM counted
            WINDOW w AS (PARTITION BY session_id ORDER BY ts, event_id),
                   whole AS (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        )
        SELECT * EXCLUDE (prev_ts, next_ts, session_first, session_last),
               CASE WHEN session_last - session_first <= {GAP_MS} THEN session_first END
                 AS visit_first,
               prev_ts IS NULL OR ts - prev_ts > {GAP_MS} AS starts,
               (prev_ts IS NULL OR ts - prev_ts > {GAP_MS})
               AND (next_ts IS NULL OR next_ts - ts > {GAP_MS}) AS alone
        FROM neighbours""",
        (
            "SELECT count(*) > 0 FROM visited WHERE visit_first IS NULL",
            """UPDATE visited SET visit_first = r.run_first FROM (
                SELECT line_id, max(CASE WHEN starts THEN ts END) OVER (
                           PARTITION BY session_id ORDER BY ts, event_id
                           ROWS UNBOUNDED PRECEDING) AS run_first
                FROM visited WHERE visit_first IS NULL) r
            WHERE visited.line_id = r.line_id""",
        ),
        # Runs of 12 hours or more: walk their beacons in order, a new visit at the first
        # beacon 12 hours or more after the visit's first.
        (
            f"SELECT count(*) > 0 FROM visited WHERE ts - visit_first >= {VISIT_MAX_MS}",
            f"""UPDATE visited SET visit_first = l.visit_first, alone = l.alone FROM (
            WITH RECURSIVE runs AS (
                SELECT session_id, visit_first AS run_first FROM visited
                WHERE ts - visit_first >= {VISIT_MAX_MS} GROUP BY ALL
            ), steps AS (
                SELECT v.session_id, v.ts, v.event_id, v.visit_first AS run_first,
                       row_number() OVER (PARTITION BY v.session_id, v.visit_first
                                          ORDER BY v.ts, v.event_id) AS step
                FROM visited v JOIN runs r
                  ON v.session_id = r.session_id AND v.visit_first = r.run_first
            ), walk(session_id, run_first, step, ts, event_id, visit_first) AS (
                SELECT session_id, run_first, step, ts, event_id, ts FROM steps WHERE step = 1
                UNION ALL
                SELECT s.session_id, s.run_first, s.step, s.ts, s.event_id,
                       CASE WHEN s.ts - w.visit_first >= {VISIT_MAX_MS} THEN s.ts
                            ELSE w.visit_first END
                FROM walk w JOIN steps s ON s.session_id = w.session_id
                     AND s.run_first = w.run_first AND s.step = w.step + 1
            )
            SELECT session_id, ts, event_id, visit_first,
                   count(*) OVER (PARTITION BY session_id, visit_first) = 1 AS alone
            FROM walk) l
            WHERE visited.session_id = l.session_id AND visited.ts = l.ts
                  AND visited.event_id = l.event_id""",
        ),
        # Within a visit an order_id counts once, at its first order beacon.
        """CREATE TEMP TABLE counted_orders AS
        SELECT line_id, o.units, o.revenue
        FROM visited v JOIN (SELECT line_id, order_id, units, revenue FROM beacons
                             WHERE type = 'order') o USING (line_id)
        QUALIFY row_number() OVER (PARTITION BY v.session_id, v.visit_first, o.order_id
                                   ORDER BY v.ts, v.event_id) = 1""",
        # The figures of a key: summed per experiments list first (the beacons of the 24
        # hours up to H's end), then over the lists that hold the key.
        f"""CREATE TEMP TABLE metrics AS
        WITH facts AS (
            SELECT v.*, o.line_id IS NOT NULL AS order_counted, o.units, o.revenue,
                   {in_hour} AS in_hour
            FROM visited v LEFT JOIN counted_orders o USING (line_id)
            WHERE v.ts >= {day_start} AND v.ts < {end}
        ), sums AS (
            SELECT list_id,
                   count(*) FILTER (WHERE type = 'page_view') AS page_views,
                   count(*) FILTER (WHERE type = 'page_view' AND alone) AS bounces,
                   count(*) FILTER (WHERE order_counted) AS orders,
                   coalesce(sum(units) FILTER (WHERE order_counted), 0) AS units,
                   coalesce(sum(revenue) FILTER (WHERE order_counted), 0) AS revenue,
                   count(*) FILTER (WHERE type = 'error') AS errors,
                   coalesce(sum(page_load_ms) FILTER (WHERE type = 'page_view'), 0)
                     AS page_load_ms_sum,
                   count(page_load_ms) FILTER (WHERE type = 'page_view') AS page_load_ms_count
            FROM facts WHERE in_hour GROUP BY list_id
        ), hour AS (
            SELECT key_id,
                   sum(page_views) AS page_views, sum(bounces) AS bounces,
                   sum(orders) AS orders, sum(units) AS units, sum(revenue) AS revenue,
                   sum(errors) AS errors, sum(page_load_ms_sum) AS page_load_ms_sum,
                   sum(page_load_ms_count) AS page_load_ms_count
            FROM sums JOIN list_keys USING (list_id) GROUP BY key_id
        ), list_visitors AS (
            SELECT list_id, visitor_id, bool_or(in_hour) AS in_hour FROM facts GROUP BY ALL
        ), key_visitors AS (
            SELECT key_id, visitor_id, bool_or(in_hour) AS in_hour
            FROM list_visitors JOIN list_keys USING (list_id) GROUP BY ALL
        ), visitors AS (
            SELECT key_id, count(*) FILTER (WHERE in_hour) AS visitors, count(*) AS visitors_24h
            FROM key_visitors GROUP BY key_id
        ), list_visits AS (
            SELECT session_id, visit_first, list_id, min(ts) AS first_ts
            FROM facts WHERE visit_first >= {start - VISIT_MAX_MS} GROUP BY ALL
        ), key_visits AS (
            SELECT session_id, visit_first, key_id, min(first_ts) AS first_ts
            FROM list_visits JOIN list_keys USING (list_id) GROUP BY ALL
        ), visits AS (
            SELECT key_id, count(*) AS visits FROM key_visits
            WHERE first_ts >= {start} AND first_ts < {end} GROUP BY key_id
        )
        SELECT p.experiment, p.variant, p.population, hour.* EXCLUDE (key_id),
               visitors.visitors, coalesce(visits.visits, 0) AS visits, visitors.visitors_24h
        FROM hour JOIN populations p USING (key_id) JOIN visitors USING (key_id)
                  LEFT JOIN visits USING (key_id)""",
    ]


def connect(
    threads: int | None = None, memory_limit: str = MEMORY_LIMIT, spill: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on `threads` threads (all cores by default) that holds at most
    `memory_limit` and spills beyond it to `spill`."""
    return duckdb.connect(
        config={
            "threads": threads or os.cpu_count() or 1,
            "memory_limit": memory_limit,
            "preserve_insertion_order": False,
            **({"temp_directory": str(spill)} if spill else {}),
        }
    )


def run(con: duckdb.DuckDBPyConnection, files: list[Path], hour_index: int, spill: Path) -> None:
    """Every statement on `con`; the tables stay for inspection (`statuses`, `metrics`)."""
    sources = _sources([Path(f) for f in files], spill)
    for statement in _statements(sources, hour_index):
        if isinstance(statement, tuple):
            condition, statement = statement
            if not con.execute(condition).fetchall()[0][0]:
                continue
        con.execute(statement)
    for i, (_, path) in enumerate(sources):  # the reader skips only lines that are not UTF-8
        other = con.execute(
            f"SELECT DISTINCT error_type::VARCHAR FROM rejects_{i}"
            " WHERE error_type <> 'INVALID ENCODING'"
        ).fetchall()
        if other:
            raise ValueError(f"{path}: lines the peer cannot read: {other}")
    collisions = """SELECT 1 FROM lists
        GROUP BY list_id HAVING count(*) > 1 OR bool_or(collides) LIMIT 1"""
    if con.execute(collisions).fetchall():
        raise ValueError("two experiments lists with one hash: the peer cannot tell them apart")
    # Every line's status: NULL (a counted beacon), 'duplicate' or its reason.
    con.execute(f"""CREATE TEMP VIEW statuses AS
        SELECT l.file_hour, {_text("l.")} AS raw,
               CASE WHEN NOT l.fast THEN s.reason
                    WHEN l.reason = 'missing_field' THEN l.reason
                    WHEN NOT ls.good THEN 'bad_field'
                    ELSE l.reason END AS reason,
               d.line_id IS NOT NULL AS duplicate
        FROM lines l
        LEFT JOIN slow_reasons s ON s.line_id = l.rowid
        LEFT JOIN lists ls ON l.fast AND ls.list_id = l.list_id
        LEFT JOIN duplicates d ON d.line_id = l.rowid""")
    unreadable = " UNION ALL ".join(
        f"SELECT {hour}::BIGINT AS file_hour, count(DISTINCT line) AS lines FROM rejects_{i}"
        for i, (hour, _) in enumerate(sources)
    )
    con.execute(f"CREATE TEMP VIEW not_utf8 AS {unreadable}")


def quality(con: duckdb.DuckDBPyConnection, hour_index: int) -> dict[str, int]:
    """The data-quality counts of a landing hour (docs/metrics.md) after `run`."""
    counts = con.execute(
        f"""SELECT count(*) FILTER (WHERE reason IS NULL AND NOT duplicate),
                   count(*) FILTER (WHERE reason IS NULL AND duplicate),
                   {", ".join(f"count(*) FILTER (WHERE reason = '{r}')" for r in REASONS)}
            FROM statuses WHERE file_hour = {hour_index}"""
    ).fetchall()[0]
    not_utf8 = con.execute(
        f"SELECT coalesce(sum(lines), 0) FROM not_utf8 WHERE file_hour = {hour_index}"
    ).fetchall()[0][0]
    names = ("valid", "duplicate", *(f"rejected_{r}" for r in REASONS))
    found = dict(zip(names, counts, strict=True))
    found["rejected_malformed_json"] += not_utf8
    return {"beacons_total": sum(found.values())} | {f"beacons_{k}": v for k, v in found.items()}


def hour_metrics(
    files: list[Path], hour_index: int, threads: int | None = None
) -> tuple[dict[tuple[str, str, str, str], float], float]:
    """The metrics of hour `hour_index` (hours since the epoch) from these landing files.

    Returns ({(metric, experiment, variant, population): value}, seconds taken).
    """
    spill = Path(tempfile.mkdtemp(prefix="expo-duckdb-peer-"))
    con = connect(threads, spill=spill)
    try:
        started = time.perf_counter()
        rows = []
        if files:
            run(con, list(files), hour_index, spill)
            rows = con.execute(
                f"SELECT experiment, variant, population, {', '.join(METRICS)} FROM metrics"
            ).fetchall()
        seconds = time.perf_counter() - started
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    values = {
        (metric, r[0], r[1], r[2]): float(value)
        for r in rows
        for metric, value in zip(METRICS, r[3:], strict=True)
    }
    return values, seconds
