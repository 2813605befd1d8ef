"""The metric store on both backends: SQLite (file, WAL) and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from expo_platform.errors import StoreError
from expo_platform.serving.store import MetricStore, Point

H1, H2, H3 = "2026-03-02T01:00:00Z", "2026-03-02T02:00:00Z", "2026-03-02T03:00:00Z"


def pt(
    metric="visits",
    hour=H1,
    layer="batch",
    value=1.0,
    experiment="exp",
    variant="A",
    population="assigned",
) -> Point:
    return Point(metric, experiment, variant, population, hour, layer, value)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'metrics.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # a clean schema for every test
            conn.execute(sa.text("DROP VIEW IF EXISTS metric_points_merged"))
            conn.execute(sa.text("DROP TABLE IF EXISTS metric_points"))
        engine.dispose()
    with MetricStore(url) as s:
        yield s


def rows(store, **kw) -> list[tuple]:
    return [(p.metric, p.variant, p.hour, p.layer, p.value) for p in store.query(**kw)]


def test_upsert_is_absolute_and_idempotent(store):
    batch = [pt(value=3.0), pt(metric="orders", value=1.0)]
    assert store.upsert(batch) == 2
    store.upsert(batch)
    assert rows(store, layer="batch") == [
        ("orders", "A", H1, "batch", 1.0),
        ("visits", "A", H1, "batch", 3.0),
    ]
    store.upsert([pt(value=5.0)])  # overwrite, never add
    assert rows(store, layer="batch", metrics=["visits"]) == [("visits", "A", H1, "batch", 5.0)]


def test_replace_drops_stale_points_of_that_layer_hour_and_metrics_only(store):
    store.upsert(
        [
            pt(variant="A"),
            pt(variant="gone"),
            pt(variant="A", hour=H2),
            pt(metric="beacons_total", experiment="", variant="", population=""),
            pt(variant="gone", layer="speed"),
        ]
    )
    store.replace([pt(variant="A", value=7.0)], layer="batch", hours=[H1], metrics=["visits"])
    assert rows(store, layer="batch") == [
        ("visits", "A", H1, "batch", 7.0),
        ("visits", "A", H2, "batch", 1.0),
    ]
    assert rows(store, layer="speed") == [("visits", "gone", H1, "speed", 1.0)]
    assert len(store.query(layer="batch", quality=True)) == 1


def test_merged_view_prefers_batch(store):
    store.upsert(
        [
            pt(variant="both", layer="speed", value=10.0),
            pt(variant="both", value=12.0),
            pt(variant="speed-only", layer="speed", value=4.0),
            pt(variant="batch-only", value=6.0),
        ]
    )
    assert rows(store, layer="merged") == [
        ("visits", "batch-only", H1, "batch", 6.0),
        ("visits", "both", H1, "batch", 12.0),
        ("visits", "speed-only", H1, "speed", 4.0),
    ]


def test_query_filters_and_sorting(store):
    store.upsert(
        [
            pt(hour=h, experiment=e, value=v)
            for v, (h, e) in enumerate([(H3, "x"), (H1, "x"), (H2, "x"), (H2, "y")])
        ]
    )
    got = store.query(layer="batch", experiment="x", hour_from=H2, hour_to=H3)
    assert [(p.experiment, p.hour) for p in got] == [("x", H2), ("x", H3)]
    everything = store.query(layer="batch")
    keys = [(p.metric, p.experiment, p.variant, p.population, p.hour) for p in everything]
    assert keys == sorted(keys) and len(keys) == 4


def test_values_key_a_layers_points_for_comparing_stores(store):
    quality = pt(metric="beacons_total", experiment="", variant="", population="", value=9.0)
    store.upsert([pt(value=3.0), pt(hour=H2, value=4.0), pt(layer="speed", value=7.0), quality])
    assert store.values(layer="batch") == {
        ("visits", "exp", "A", "assigned", H1): 3.0,
        ("visits", "exp", "A", "assigned", H2): 4.0,
    }
    assert store.values(layer="batch", quality=None) == {
        ("visits", "exp", "A", "assigned", H1): 3.0,
        ("visits", "exp", "A", "assigned", H2): 4.0,
        ("beacons_total", "", "", "", H1): 9.0,
    }
    assert store.values(layer="batch", hour_from=H2, hour_to=H2, by_hour=False) == {
        ("visits", "exp", "A", "assigned"): 4.0
    }
    with pytest.raises(ValueError, match="one hour"):
        store.values(layer="batch", by_hour=False)  # two hours would share keys


def test_key_spans_give_each_keys_first_and_last_hour_in_either_layer(store):
    store.upsert(
        [
            pt(hour=H1, layer="batch", metric="visitors"),
            pt(hour=H3, layer="speed", metric="visitors"),
            pt(hour=H2, layer="batch", metric="visitors", variant="B"),
            pt(hour=H3, layer="batch", metric="orders", variant="C"),  # not a visitors point
            Point("visitors", "other", "A", "qualified", H2, "speed", 1.0),
            Point("beacons_total", "", "", "", H2, "batch", 9.0),
        ]
    )
    assert [
        (s.experiment, s.variant, s.population, s.first_hour, s.last_hour)
        for s in store.key_spans()
    ] == [
        ("exp", "A", "assigned", H1, H3),
        ("exp", "B", "assigned", H2, H2),
        ("other", "A", "qualified", H2, H2),
    ]
    assert [(s.experiment, s.last_hour) for s in store.key_spans("beacons_total")] == [("", H2)]
    assert store.key_spans("visitors_rolling_1h") == []


def test_invalid_points_write_nothing(store):
    with pytest.raises(ValueError, match="layer"):
        store.upsert([pt(), pt(layer="fast")])
    with pytest.raises(ValueError, match="finite"):
        store.upsert([pt(), pt(value=float("nan"))])
    assert store.query(layer="batch") == []


def test_unreachable_postgres_is_one_line_without_password():
    with pytest.raises(StoreError) as info:
        MetricStore("postgresql://expo:hunter2@127.0.0.1:9/expo", connect_timeout_s=2)
    message = str(info.value)
    assert "unreachable" in message and "hunter2" not in message and "\n" not in message


def test_unwritable_sqlite_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError):
        MetricStore(f"sqlite:///{blocker / 'sub' / 'metrics.sqlite'}")


def test_sqlite_is_in_wal_mode_and_shared_by_two_writers(tmp_path):
    path = tmp_path / "metrics.sqlite"
    with MetricStore(f"sqlite:///{path}") as speed, MetricStore(f"sqlite:///{path}") as batch:
        for i in range(20):
            speed.upsert([pt(layer="speed", value=float(i))])
            batch.upsert([pt(layer="batch", value=float(i))])
        assert rows(speed, layer="merged") == [("visits", "A", H1, "batch", 19.0)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
