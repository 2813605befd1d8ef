"""The batch layer through Dagster: assets, checks, jobs and `run_batch`, on a real lake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_defs
from expo_platform import lake
from expo_platform.core.hours import hour_iso, hour_key, hour_start_ms, parse_hour
from expo_platform.errors import ExpoError
from expo_platform.ops.dagster_home import prepare_dagster_home
from expo_platform.serving.store import MetricStore
from sensors.batch_runner import run_batch

PROJECT = Path(__file__).resolve().parent.parent
H0 = parse_hour("2026-03-02T00")
H1, H2, H3 = (parse_hour(f"2026-03-02T0{i}") for i in (1, 2, 3))
MIN = 60_000


def ts(hour, minute: float) -> int:
    return hour_start_ms(hour) + int(minute * MIN)


def beacon(
    event_id, visitor, session, when, type_="page_view", exps=(("exp", "A", True),), **extra
) -> str:
    data = {
        "event_id": event_id,
        "visitor_id": visitor,
        "session_id": session,
        "ts": when,
        "type": type_,
        "page": "/",
        "experiments": [{"id": e, "variant": v, "qualified": q} for e, v, q in exps],
        **extra,
    }
    return json.dumps(data)


ORDER = {"order_id": "o1", "revenue": 30.0, "units": 2}
SCENARIO = {
    H0: [
        beacon("a1", "v1", "s1", ts(H0, 50)),
        beacon("a2", "v1", "s1", ts(H0, 55), "add_to_cart"),
        beacon("b1", "v2", "s2", ts(H0, 10), exps=(("exp", "B", False),)),
        beacon("b1", "v2", "s2", ts(H0, 10), exps=(("exp", "B", False),)),  # re-sent
        "{oops",
        beacon("w1", "v9", "s9", ts(H1, 5)),  # wrong partition
        "",
    ],
    H1: [
        beacon("a3", "v1", "s1", ts(H1, 20), "order", order=ORDER),
        beacon("a4", "v1", "s1", ts(H1, 21), "order", order=ORDER),  # same order again
        beacon("c1", "v3", "s3", ts(H1, 59)),
    ],
    H2: [beacon("c2", "v3", "s3", ts(H2, 10))],
}


def write_landing(settings, hour, lines, name="part-0.json") -> Path:
    folder = lake.landing_partition(settings, hour)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def batch_env(settings, monkeypatch):
    """A lake, a metric store and a Dagster instance for `run_batch`, all under tmp_path."""
    monkeypatch.setenv("DAGSTER_HOME", str(settings.local.dagster_home))
    monkeypatch.delenv("EXPO_METRIC_STORE", raising=False)
    prepare_dagster_home(settings, PROJECT)
    # the hand-built hours are a third rejects; the blocking check has its own test
    return settings.replace(batch={"max_reject_rate": 0.5})


def values(settings, layer="batch", quality=False) -> dict:
    with MetricStore(settings.lake.metric_store) as store:
        return store.values(layer=layer, quality=quality)


def test_hand_built_hours_give_hand_computed_metrics(batch_env, spark):
    settings = batch_env
    for hour, lines in SCENARIO.items():
        write_landing(settings, hour, lines)
    done = run_batch(build_defs(settings), H0, H2, progress=lambda line: None)
    # H3 is ingested (empty) for H2's bounces; no day ends in the range
    assert done == {"ingested": 4, "metrics": 3, "days": 0}

    got = values(settings)

    def m(metric, hour, variant="A", population="assigned"):
        return got.get((metric, "exp", variant, population, hour_iso(hour)))

    assert [m("page_views", H0), m("visitors", H0), m("visits", H0), m("bounces", H0)] == [
        1.0,
        1.0,
        1.0,
        0.0,
    ]
    assert m("visits", H0, population="qualified") == 1.0
    assert [m("visits", H0, "B"), m("bounces", H0, "B")] == [1.0, 1.0]
    assert m("visits", H0, "B", "qualified") is None
    # H1: v1's visit goes on from H0 (25 min gap): no new visit; o1 counts once
    assert [m("page_views", H1), m("visitors", H1), m("visits", H1), m("bounces", H1)] == [
        1.0,
        2.0,
        1.0,
        0.0,
    ]
    assert [m("orders", H1), m("units", H1), m("revenue", H1)] == [1.0, 2.0, 30.0]
    assert m("visitors_24h", H1) == 2.0
    assert m("visitors_24h", H1, "B") is None  # no beacon of B in H1: no row
    # H2: v3's visit began at 01:59, so it is not a new visit
    assert [m("page_views", H2), m("visits", H2), m("bounces", H2)] == [1.0, 0.0, 0.0]
    assert m("visitors_24h", H2) == 2.0

    quality = values(settings, quality=True)
    q0 = {k[0]: v for k, v in quality.items() if k[4] == hour_iso(H0)}
    assert q0 == {
        "beacons_total": 6.0,
        "beacons_valid": 3.0,
        "beacons_duplicate": 1.0,
        "beacons_rejected_malformed_json": 1.0,
        "beacons_rejected_missing_field": 0.0,
        "beacons_rejected_bad_field": 0.0,
        "beacons_rejected_wrong_partition": 1.0,
    }
    q3 = {k[0]: v for k, v in quality.items() if k[4] == hour_iso(H3)}
    assert q3["beacons_total"] == 0.0  # an empty hour is processed, not an error

    # the quarantine keeps every rejected line with its reason
    rejects = lake.BEACON_REJECTS.read_partitions(spark, settings, [H0]).collect()
    assert sorted((r["reason"], r["raw"][:5]) for r in rejects) == [
        ("duplicate", '{"eve'),
        ("malformed_json", "{oops"),
        ("wrong_partition", '{"eve'),
    ]

    # sessions is a Hive external table with one partition per hour
    table = spark.sql(f"SHOW PARTITIONS {lake.sessions_table(settings)}").collect()
    assert [r[0] for r in table] == [f"hourly_partitioner={hour_key(h)}" for h in (H0, H1, H2, H3)]
    hive_rows = (
        spark.table(lake.sessions_table(settings))
        .where(f"hourly_partitioner = '{hour_key(H1)}'")
        .count()
    )
    assert hive_rows == 2  # v1's continued visit and v3's new one

    # every run is in the Dagster instance, with the materialization metadata
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("beacon_rejects"))
    assert event is not None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("beacon_rejects"), asset_partitions=[hour_key(H0)]
        ),
        limit=1,
    ).records
    metadata = records[0].asset_materialization.metadata
    assert metadata["rejected_malformed_json"].value == 1
    assert metadata["duplicates"].value == 1
    for asset, figure in (
        ("beacons", "rows"),
        ("sessions", "visits_active"),
        ("experiment_metrics", "points"),
    ):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[hour_key(H1)]),
            limit=1,
        ).records
        shown = record.asset_materialization.metadata
        assert shown[figure].value > 0 and "|" in shown["preview"].value, asset
    runs = instance.get_runs()
    assert len(runs) == 4 + 3 and all(r.is_success for r in runs)


def test_rerun_is_idempotent(batch_env, spark):
    settings = batch_env
    for hour, lines in SCENARIO.items():
        write_landing(settings, hour, lines)
    run_batch(build_defs(settings), H0, H2, progress=lambda line: None)
    first_store = values(settings)
    first_quality = values(settings, quality=True)
    first_sessions = sorted(
        map(str, lake.SESSIONS.read_partitions(spark, settings, [H0, H1, H2, H3]).collect())
    )
    run_batch(build_defs(settings), H0, H2, progress=lambda line: None)
    run_batch(build_defs(settings), H1, H1, progress=lambda line: None)
    assert values(settings) == first_store
    assert values(settings, quality=True) == first_quality
    again = sorted(
        map(str, lake.SESSIONS.read_partitions(spark, settings, [H0, H1, H2, H3]).collect())
    )
    assert again == first_sessions


def test_late_file_then_rerun_equals_one_clean_run(batch_env, spark, tmp_path):
    settings = batch_env
    late = [
        beacon("L1", "v7", "s7", ts(H1, 30), exps=(("exp", "B", True),)),
        beacon(
            "L2",
            "v1",
            "s1",
            ts(H1, 40),
            "order",
            order={"order_id": "o2", "revenue": 5.0, "units": 1},
        ),
        beacon("a4", "v1", "s1", ts(H1, 21), "order", order=ORDER),  # a duplicate
    ]
    for hour, lines in SCENARIO.items():
        write_landing(settings, hour, lines)
    run_batch(build_defs(settings), H0, H2, progress=lambda line: None)
    write_landing(settings, H1, late, name="part-late.json")
    run_batch(build_defs(settings), H1, H2, progress=lambda line: None)
    with_late = (values(settings), values(settings, quality=True))

    clean_lake = tmp_path / "clean"
    shutil.copytree(settings.lake.landing_dir, clean_lake / "landing" / "beacons")
    clean = settings.replace(
        lake={"root": clean_lake, "metric_store": f"sqlite:///{clean_lake / 'm.sqlite'}"}
    )
    run_batch(build_defs(clean), H0, H2, progress=lambda line: None)
    assert (values(clean), values(clean, quality=True)) == with_late
    assert values(clean)[("orders", "exp", "A", "assigned", hour_iso(H1))] == 2.0


def test_blocking_reject_rate_check_stops_the_hour(batch_env):
    settings = batch_env
    write_landing(settings, H0, [beacon("a1", "v1", "s1", ts(H0, 1)), "{bad", "{bad2", "[]"])
    with pytest.raises(
        ExpoError,
        match="hourly_ingest of 2026-03-02T00 failed.*"
        "blocking asset check failed.*reject_rate_below_threshold",
    ):
        run_batch(build_defs(settings), H0, H0, progress=lambda line: None)
    assert lake.BEACONS.has_partition(settings, H0)  # written, then held back
    assert not lake.SESSIONS.has_partition(settings, H0)


def test_hours_outside_the_partitions_are_refused(batch_env):
    settings = batch_env
    with pytest.raises(ExpoError, match="outside the hourly partitions"):
        run_batch(build_defs(settings), parse_hour("2025-12-31T23"), H0, progress=lambda line: None)
    with pytest.raises(ExpoError, match="outside the hourly partitions"):
        run_batch(build_defs(settings), H0, parse_hour("2099-01-01T00"), progress=lambda line: None)


def test_metrics_need_the_next_hour(batch_env, spark):
    from expo_platform.batch.steps import process_beacons, process_metrics, process_sessions

    settings = batch_env
    write_landing(settings, H0, SCENARIO[H0])
    write_landing(settings, H1, SCENARIO[H1])
    process_beacons(spark, settings, H0)
    process_sessions(spark, settings, H0)
    with (
        MetricStore(settings.lake.metric_store) as store,
        pytest.raises(ExpoError, match="of 2026-03-02T00 need the sessions of 2026-03-02T01"),
    ):
        process_metrics(spark, settings, store, H0)
    # sessions of H2 cannot skip H1, whose landing files exist
    write_landing(settings, H2, SCENARIO[H2])
    process_beacons(spark, settings, H2)
    with pytest.raises(ExpoError, match="sessions of 2026-03-02T01 are not materialized"):
        process_sessions(spark, settings, H2)


def test_hours_without_landing_files_are_empty_hours(batch_env, spark):
    """Metrics of the hour before the data, and of the last hour before a gap, succeed."""
    from expo_platform.batch.steps import process_beacons, process_metrics, process_sessions

    settings = batch_env
    write_landing(settings, H1, SCENARIO[H1])
    process_beacons(spark, settings, H1)
    process_sessions(spark, settings, H1)
    with MetricStore(settings.lake.metric_store) as store:
        assert process_metrics(spark, settings, store, H0).counts["points"] == 0
        assert process_metrics(spark, settings, store, H1).counts["points"] > 0
        got = {
            (p.metric, p.variant): p.value
            for p in store.query(layer="batch")
            if p.population == "assigned"
        }
    # nothing follows in H2, so v3's lone page view at 01:59 is a bounce
    assert got[("bounces", "A")] == 1.0


def test_visitors_24h_of_an_hour_whose_beacons_were_redone_come_from_the_new_beacons(
    batch_env, spark
):
    """A late file arrives for H0 and only its beacons are redone (the run fails before the
    sessions): H0's sketches of the old beacons are gone, and visitors_24h of H1 sketches H0
    from its new beacons. Redoing the sessions writes sketches that agree."""
    from expo_platform.batch.steps import process_beacons, process_metrics, process_sessions

    settings = batch_env
    for hour, lines in SCENARIO.items():
        write_landing(settings, hour, lines)
        process_beacons(spark, settings, hour)
        process_sessions(spark, settings, hour)
    key = ("visitors_24h", "exp", "A", "assigned", hour_iso(H1))
    with MetricStore(settings.lake.metric_store) as store:
        process_metrics(spark, settings, store, H1)
    assert values(settings)[key] == 2.0  # v1, v3

    write_landing(settings, H0, [beacon("L8", "v8", "s8", ts(H0, 30))], name="part-late.json")
    process_beacons(spark, settings, H0)
    assert not lake.VISITOR_SKETCHES.has_partition(settings, H0)
    with MetricStore(settings.lake.metric_store) as store:
        process_metrics(spark, settings, store, H1)
        assert values(settings)[key] == 3.0  # and v8
        process_sessions(spark, settings, H0)
        assert lake.VISITOR_SKETCHES.has_partition(settings, H0)
        process_metrics(spark, settings, store, H1)
    assert values(settings)[key] == 3.0


def test_gzipped_landing_files_are_read(batch_env, spark):
    import gzip

    from expo_platform.batch.steps import process_beacons

    settings = batch_env
    folder = lake.landing_partition(settings, H0)
    folder.mkdir(parents=True)
    with gzip.open(folder / "part-0.json.gz", "wt") as out:
        out.write("\n".join(SCENARIO[H0][:3]) + "\n")
    write_landing(settings, H0, SCENARIO[H0][3:], name="part-1.json")
    (folder / "notes.txt").write_text("not a landing file")
    counts = process_beacons(spark, settings, H0).counts
    assert counts["files"] == 2
    assert (counts["beacons_total"], counts["beacons_valid"]) == (6, 3)


def test_rows_per_partition_come_from_the_parquet_footers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(hour: str, name: str, rows: int) -> None:
        folder = tmp_path / f"hourly_partitioner={hour}"
        folder.mkdir(exist_ok=True)
        pq.write_table(pa.table({"event_id": [f"e-{i}" for i in range(rows)]}), folder / name)

    write("2026-03-02-12", "part-00000.snappy.parquet", 3)
    write("2026-03-02-13", "part-00000.snappy.parquet", 1)
    write("2026-03-02-13", "part-00001.snappy.parquet", 4)
    (tmp_path / "_SUCCESS").touch()
    (tmp_path / "hourly_partitioner=2026-03-02-13" / ".part-00000.crc").touch()

    assert lake.parquet_rows_by_partition(tmp_path) == {"2026-03-02-12": 3, "2026-03-02-13": 5}
    assert lake.parquet_rows_by_partition(tmp_path / "missing") == {}
