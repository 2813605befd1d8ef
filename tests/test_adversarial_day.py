"""A day of adversarial traffic through the batch layer, checked against an independent oracle.

The generator mixes traps around every rule of METRICS.md into realistic traffic (visits over
three to five hours, gaps of exactly 35 minutes on an hour boundary, late re-sends, beacons
out of order, qualification that flips, multi-variant visitors, 13-hour robots, experiments
listed twice). Fifteen hours of it go through Dagster (`run_batch`) up to a finished day;
then the store, `visitor_daily` and the scorecards are compared with `tests/reference.py`,
a plain-Python reading of METRICS.md that computes them straight from the landing files.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from itertools import pairwise

import dagster as dg
import pandas as pd
import pytest

from definitions import build_defs
from expo_platform import lake
from expo_platform.analysis.daily import POPULATIONS, scorecard_path
from expo_platform.analysis.scorecards import VISITOR_METRICS
from expo_platform.core.hours import parse_hour
from expo_platform.core.metrics import ALLOWED_ERROR
from expo_platform.devtools.generator import GeneratorConfig
from expo_platform.devtools.traffic_model import DEFAULT_EXPERIMENTS
from expo_platform.serving.store import MetricStore
from sensors.batch_runner import run_batch
from tests import reference
from tests.helpers import generated_lake, in_dagster_home

DAY = date(2026, 3, 2)
# Robots stay for up to 15 hours: the day's traffic starts at 09:00.
FIRST, LAST = parse_hour("2026-03-02T09"), parse_hour("2026-03-02T23")
CONFIG = GeneratorConfig(
    start=FIRST, hours=15, visitors=700, seed=29, dirty_fraction=0.01, trap_fraction=0.3
)


@pytest.fixture(scope="module")
def adversarial_day(tmp_path_factory, session_lake, spark):
    """The finished day, analysed by the batch layer, and the oracle's counted beacons."""
    settings, report = generated_lake(
        tmp_path_factory.mktemp("adversarial"), session_lake.spark.conf, CONFIG
    )
    with in_dagster_home(settings):
        done = run_batch(build_defs(settings), FIRST, LAST, progress=lambda line: None)
        instance = dg.DagsterInstance.get()
    beacons = reference.load_counted(settings.lake.landing_dir)
    yield settings, done, instance, report, beacons


def test_the_traffic_holds_every_trap(adversarial_day):
    _, done, _, report, beacons = adversarial_day
    assert done == {"ingested": 16, "metrics": 15, "days": 1}
    assert set(report.traps) >= {
        "long_visit",
        "late_duplicate",
        "out_of_order",
        "qualification_flip",
        "multi_variant",
        "robot",
        "experiment_twice",
        "same_ts",
    }
    # A visit over three hours or more, and one cut at 12 hours, are really there.
    visits = reference.visits(beacons)
    spans = [len({b["ts"] // reference.HOUR_MS for b in v.beacons}) for v in visits]
    assert max(spans) >= 3
    # Consecutive visits of a session less than 35 minutes apart: only the 12-hour rule cut them.
    cuts = [
        (a, b)
        for a, b in pairwise(visits)
        if a.session_id == b.session_id
        and b.first_ts - a.beacons[-1]["ts"] <= reference.VISIT_GAP_MS
    ]
    assert cuts


def test_hourly_metrics_equal_the_oracle(adversarial_day):
    settings, _, _, _, beacons = adversarial_day
    expected = reference.hourly_metrics(beacons)
    with MetricStore(settings.lake.metric_store) as store:
        stored = store.values(layer="batch")
    assert set(stored) == set(expected)
    for key, want in expected.items():
        allowed = ALLOWED_ERROR.get(key[0], 0.0)
        assert stored[key] == pytest.approx(want, rel=max(allowed, 1e-12), abs=1e-9), key


def test_visitor_daily_adds_up_and_equals_the_oracle_per_visitor(adversarial_day):
    settings, _, instance, _, beacons = adversarial_day
    (execution,) = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("visitor_daily"), "visitor_sums_equal_hourly_metrics")]
    ).values()
    assert execution.event.dagster_event.event_specific_data.passed is True
    rows = pd.read_parquet(lake.VISITOR_DAILY.partition_path(settings, DAY))
    compared = 0
    for spec in DEFAULT_EXPERIMENTS:
        for population in POPULATIONS:
            want = reference.visitor_sums(beacons, spec.id, population)
            mine = rows[(rows.experiment == spec.id) & (rows.population == population)]
            got = {
                (r.variant, r.visitor_id): {m: float(getattr(r, m)) for m in VISITOR_METRICS}
                for r in mine.itertuples()
            }
            assert set(got) == set(want), (spec.id, population)
            for visitor, sums in want.items():
                for metric in VISITOR_METRICS:
                    assert got[visitor][metric] == pytest.approx(sums[metric], abs=1e-9)
                    compared += 1
    assert compared > 7 * 1000
    # And the per-visitor sums of each key add up to its hourly metrics over the day.
    with MetricStore(settings.lake.metric_store) as store:
        hourly = defaultdict(float)
        for (metric, *key, _), value in store.values(layer="batch").items():
            hourly[(*key, metric)] += value
    sums = rows.groupby(["experiment", "variant", "population"])[list(VISITOR_METRICS)].sum()
    for key, row in sums.iterrows():
        for metric in VISITOR_METRICS:
            assert row[metric] == pytest.approx(hourly[(*key, metric)], abs=1e-6), (key, metric)


@pytest.mark.parametrize("population", POPULATIONS)
def test_scorecards_equal_an_independent_computation(adversarial_day, population):
    settings, _, _, _, beacons = adversarial_day
    multi_variant = 0
    for spec in DEFAULT_EXPERIMENTS:
        card = json.loads(scorecard_path(settings, DAY, spec.id, population).read_text())
        ours = reference.scorecard(beacons, spec.id, population)
        assert reference.compare_scorecards(ours, card) == [], (spec.id, population)
        multi_variant += card["visitors_multi_variant"]
    if population == "assigned":  # the multi-variant trap reached the scorecards
        assert multi_variant > 0
