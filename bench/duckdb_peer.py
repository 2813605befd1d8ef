"""An independent DuckDB SQL implementation of METRICS.md sections 1 to 4, for one hour.

It reads the same landing files as the batch layer and shares no code with it: it is both
the strongest single-machine peer for the throughput figures and a cross-check of the
metrics. Its input is hour H and hour H+1 (bounces and visits need the next 35 minutes); no
visit is carried in from H-1, so the batch layer must be given no H-1 either.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from expo_platform.core.metrics import EXPERIMENT_METRICS

HOUR_MS = 3_600_000
GAP_MS = 2_100_000
# The metric columns the SQL below computes: every metric of an experiment hour.
METRICS = EXPERIMENT_METRICS
INTEGER = "('UBIGINT', 'BIGINT')"
NUMBER = "('UBIGINT', 'BIGINT', 'DOUBLE')"


def _string(path: str) -> str:
    """A required non-empty JSON string field."""
    return f"(json_type(j, '{path}') = 'VARCHAR' AND json_extract_string(j, '{path}') <> '')"


VALID = f"""
    json_type(j) = 'OBJECT'
    AND {_string("$.event_id")} AND {_string("$.visitor_id")} AND {_string("$.session_id")}
    AND json_type(j, '$.ts') IN {INTEGER} AND json_extract(j, '$.ts')::HUGEINT > 0
    AND json_extract_string(j, '$.type') IN ('page_view', 'add_to_cart', 'order', 'error')
    AND json_type(j, '$.type') = 'VARCHAR'
    AND (coalesce(json_type(j, '$.experiments'), 'NULL') = 'NULL' OR (
        json_type(j, '$.experiments') = 'ARRAY'
        AND coalesce(list_bool_and([
            json_type(x) = 'OBJECT'
            AND json_type(x, '$.id') = 'VARCHAR' AND json_extract_string(x, '$.id') <> ''
            AND json_type(x, '$.variant') = 'VARCHAR'
            AND json_extract_string(x, '$.variant') <> ''
            AND coalesce(json_type(x, '$.qualified'), 'NULL') IN ('NULL', 'BOOLEAN')
            FOR x IN json_extract(j, '$.experiments[*]')]), true)))
    AND (json_extract_string(j, '$.type') <> 'order' OR (
        json_type(j, '$.order') = 'OBJECT'
        AND json_type(j, '$.order.order_id') = 'VARCHAR'
        AND json_extract_string(j, '$.order.order_id') <> ''
        AND json_type(j, '$.order.revenue') IN {NUMBER}
        AND json_extract(j, '$.order.revenue')::DOUBLE >= 0
        AND json_type(j, '$.order.units') IN {INTEGER}
        AND json_extract(j, '$.order.units')::HUGEINT >= 0))
    AND (coalesce(json_type(j, '$.perf'), 'NULL') = 'NULL' OR (
        json_type(j, '$.perf') = 'OBJECT'
        AND (coalesce(json_type(j, '$.perf.page_load_ms'), 'NULL') = 'NULL' OR (
            json_type(j, '$.perf.page_load_ms') IN {INTEGER}
            AND json_extract(j, '$.perf.page_load_ms')::HUGEINT >= 0))))
"""

EXPERIMENTS_TYPE = '[{"id": "VARCHAR", "variant": "VARCHAR", "qualified": "BOOLEAN"}]'


def _queries(files: list[str], hour_index: int) -> list[str]:
    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    start, end = hour_index * HOUR_MS, (hour_index + 1) * HOUR_MS
    return [
        # Lines of the landing files; blank lines are not beacons.
        f"""CREATE TEMP TABLE lines AS
        SELECT epoch_ms(strptime(regexp_extract(filename, 'hour=([0-9-]+)', 1), '%Y-%m-%d-%H'))
                 // {HOUR_MS} AS file_hour, line AS raw
        FROM read_csv({file_list}, columns = {{'line': 'VARCHAR'}}, header = false,
                      delim = '{chr(31)}', quote = '', escape = '', filename = true,
                      auto_detect = false, strict_mode = false, max_line_size = 16777216)
        WHERE line IS NOT NULL AND trim(line) <> ''""",
        # Valid beacons in their landing hour, first by (ts, raw) per event_id.
        f"""CREATE TEMP TABLE counted AS
        WITH parsed AS (
            SELECT file_hour, raw, CASE WHEN json_valid(raw) THEN raw::JSON END AS j FROM lines
        ), valid AS (
            SELECT file_hour, raw,
                   json_extract_string(j, '$.event_id') AS event_id,
                   json_extract_string(j, '$.visitor_id') AS visitor_id,
                   json_extract_string(j, '$.session_id') AS session_id,
                   json_extract(j, '$.ts')::BIGINT AS ts,
                   json_extract_string(j, '$.type') AS type,
                   json_extract_string(j, '$.order.order_id') AS order_id,
                   json_extract(j, '$.order.revenue')::DOUBLE AS revenue,
                   json_extract(j, '$.order.units')::BIGINT AS units,
                   json_extract(j, '$.perf.page_load_ms')::BIGINT AS page_load_ms,
                   from_json(json_extract(j, '$.experiments'), '{EXPERIMENTS_TYPE}')
                     AS experiments
            FROM parsed WHERE j IS NOT NULL AND ({VALID})
        )
        SELECT * EXCLUDE (file_hour) FROM valid
        WHERE ts // {HOUR_MS} = file_hour
        QUALIFY row_number() OVER (PARTITION BY file_hour, event_id ORDER BY ts, raw) = 1""",
        # Visits: a gap of more than 35 minutes in a session starts one.
        f"""CREATE TEMP TABLE visited AS
        WITH gaps AS (
            SELECT *, CASE WHEN ts - lag(ts) OVER w > {GAP_MS} OR lag(ts) OVER w IS NULL
                      THEN 1 ELSE 0 END AS starts
            FROM counted WINDOW w AS (PARTITION BY session_id ORDER BY ts, event_id)
        ), seq AS (
            SELECT *, sum(starts) OVER (PARTITION BY session_id ORDER BY ts, event_id
                                        ROWS UNBOUNDED PRECEDING) AS visit_seq
            FROM gaps
        )
        SELECT *, count(*) OVER (PARTITION BY session_id, visit_seq) AS visit_size,
               type = 'order' AND row_number() OVER (
                   PARTITION BY session_id, visit_seq, order_id ORDER BY ts, event_id) = 1
                 AS order_counted
        FROM seq""",
        # One row per (beacon, population); an experiment listed twice counts once, first.
        """CREATE TEMP TABLE in_population AS
        WITH entries AS (
            SELECT v.*, unnest(experiments) AS e, generate_subscripts(experiments, 1) AS i
            FROM visited v
        ), firsts AS (
            SELECT * FROM entries
            QUALIFY row_number() OVER (PARTITION BY event_id, e.id ORDER BY i) = 1
        )
        SELECT *, e.id AS experiment, e.variant AS variant, 'assigned' AS population FROM firsts
        UNION ALL
        SELECT *, e.id, e.variant, 'qualified' FROM firsts WHERE coalesce(e.qualified, false)""",
        f"""CREATE TEMP TABLE metrics AS
        WITH visit_starts AS (
            SELECT experiment, variant, population, min(ts) AS first_ts
            FROM in_population GROUP BY session_id, visit_seq, experiment, variant, population
        ), starts AS (
            SELECT experiment, variant, population, count(*) AS visits FROM visit_starts
            WHERE first_ts >= {start} AND first_ts < {end} GROUP BY ALL
        ), hour AS (
            SELECT experiment, variant, population,
                   count(*) FILTER (WHERE type = 'page_view') AS page_views,
                   count(DISTINCT visitor_id) AS visitors,
                   count(*) FILTER (WHERE type = 'page_view' AND visit_size = 1) AS bounces,
                   count(*) FILTER (WHERE order_counted) AS orders,
                   coalesce(sum(units) FILTER (WHERE order_counted), 0) AS units,
                   coalesce(sum(revenue) FILTER (WHERE order_counted), 0) AS revenue,
                   count(*) FILTER (WHERE type = 'error') AS errors,
                   coalesce(sum(page_load_ms) FILTER (WHERE type = 'page_view'), 0)
                     AS page_load_ms_sum,
                   count(page_load_ms) FILTER (WHERE type = 'page_view') AS page_load_ms_count
            FROM in_population WHERE ts >= {start} AND ts < {end} GROUP BY ALL
        ), day AS (
            SELECT experiment, variant, population, count(DISTINCT visitor_id) AS visitors_24h
            FROM in_population WHERE ts >= {start - 23 * HOUR_MS} AND ts < {end} GROUP BY ALL
        )
        SELECT hour.*, coalesce(starts.visits, 0) AS visits, day.visitors_24h
        FROM hour LEFT JOIN starts USING (experiment, variant, population)
                  LEFT JOIN day USING (experiment, variant, population)""",
    ]


def hour_metrics(
    files: list[Path], hour_index: int, threads: int | None = None
) -> tuple[dict[tuple[str, str, str, str], float], float]:
    """The metrics of hour `hour_index` (hours since the epoch) from these landing files.

    Returns ({(metric, experiment, variant, population): value}, seconds taken).
    """
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    started = time.perf_counter()
    for query in _queries([str(f) for f in files], hour_index):
        con.execute(query)
    rows = con.execute(
        f"SELECT experiment, variant, population, {', '.join(METRICS)} FROM metrics"
    ).fetchall()
    seconds = time.perf_counter() - started
    con.close()
    values = {
        (metric, r[0], r[1], r[2]): float(value)
        for r in rows
        for metric, value in zip(METRICS, r[3:], strict=True)
    }
    return values, seconds
