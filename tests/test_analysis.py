"""The daily analysis through Dagster: visitor_daily, scorecards, trend reports, reconciliation.

Generated traffic for the last three hours of a day (and an empty first hour of the next)
goes through `run_batch`; the results are checked against the hourly metrics in the store
and against scipy run directly on the visitor rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from datetime import date

import dagster as dg
import pandas as pd
import pytest
from scipy import stats as sps

from definitions import build_defs
from expo_platform import cli, lake
from expo_platform.analysis.charts import CHARTED
from expo_platform.analysis.daily import scorecard_path, trend_report_path
from expo_platform.analysis.scorecards import VISITOR_METRICS
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig
from expo_platform.serving.store import MetricStore, Point
from resources import AlertsResource
from sensors.batch_runner import run_batch
from sensors.supervisor import alert_on_failed_check, alert_on_run_failure
from tests.helpers import generated_lake, in_dagster_home

DAY = date(2026, 3, 2)
FIRST, LAST = parse_hour("2026-03-02T21"), parse_hour("2026-03-02T23")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, session_lake, spark):
    """A lake whose day 2026-03-02 has been analysed; speed points of 22:00 are off by 10%."""
    config = GeneratorConfig(start=FIRST, hours=3, visitors=1500, seed=11, dirty_fraction=0.01)
    settings, _ = generated_lake(
        tmp_path_factory.mktemp("analysis"), session_lake.spark.conf, config
    )
    with in_dagster_home(settings):
        defs = build_defs(settings)
        done = run_batch(defs, FIRST, LAST, progress=lambda line: None)
        # The speed layer's view of 22:00: every orders point 10% high.
        with MetricStore(settings.lake.metric_store) as store:
            batch = store.query(
                layer="batch", hour_from="2026-03-02T22:00:00Z", hour_to="2026-03-02T22:00:00Z"
            )
            store.upsert(
                Point(
                    p.metric,
                    p.experiment,
                    p.variant,
                    p.population,
                    p.hour,
                    "speed",
                    p.value * (1.1 if p.metric == "orders" else 1.0),
                )
                for p in batch
            )
        run_batch(defs, FIRST.replace(hour=22), FIRST.replace(hour=22), lambda line: None)
        yield settings, done, dg.DagsterInstance.get()


def _store_sums(settings) -> dict:
    """Day totals per (experiment, variant, population, metric) from the hourly batch points."""
    sums = defaultdict(float)
    with MetricStore(settings.lake.metric_store) as store:
        for p in store.query(layer="batch"):
            if p.metric in VISITOR_METRICS:
                sums[(p.experiment, p.variant, p.population, p.metric)] += p.value
    return sums


def _visitor_rows(settings) -> pd.DataFrame:
    return pd.read_parquet(lake.VISITOR_DAILY.partition_path(settings, DAY))


def test_batch_analyses_the_finished_day(analysed):
    _, done, _ = analysed
    assert done == {"ingested": 4, "metrics": 3, "days": 1}


def test_visitor_daily_adds_up_to_the_hourly_metrics(analysed):
    settings, _, _ = analysed
    rows = _visitor_rows(settings)
    assert len(rows) > 1000
    per_key = rows.groupby(["experiment", "variant", "population"])[list(VISITOR_METRICS)].sum()
    expected = _store_sums(settings)
    compared = 0
    for (experiment, variant, population), sums in per_key.iterrows():
        for metric in VISITOR_METRICS:
            want = expected[(experiment, variant, population, metric)]
            assert sums[metric] == pytest.approx(want, abs=1e-6), (experiment, variant, metric)
            compared += 1
    # 7 variants of 3 experiments, 2 populations each: every key of the store is compared.
    assert compared == len(expected) == 14 * len(VISITOR_METRICS)
    # One row per (experiment, population, variant, visitor).
    assert not rows.duplicated(["experiment", "population", "variant", "visitor_id"]).any()


def test_scorecard_matches_scipy_on_the_visitor_rows(analysed):
    settings, _, _ = analysed
    card = json.loads(scorecard_path(settings, DAY, "checkout-button", "assigned").read_text())
    rows = _visitor_rows(settings)
    rows = rows[(rows.experiment == "checkout-button") & (rows.population == "assigned")]
    assert card["control"] == "control"
    assert card["visitors_multi_variant"] == 0  # the generator assigns a visitor once
    for variant in ("control", "treatment"):
        assert card["variants"][variant]["visitors"] == (rows.variant == variant).sum()
    orders = next(c for c in card["comparisons"] if c["metric"] == "orders")
    direct = sps.ttest_ind(
        rows[rows.variant == "treatment"].orders,
        rows[rows.variant == "control"].orders,
        equal_var=False,
    )
    assert orders["p_value"] == pytest.approx(direct.pvalue, rel=1e-9)
    counts = [card["variants"][v]["visitors"] for v in ("control", "treatment")]
    assert card["srm"]["p_value"] == pytest.approx(sps.chisquare(counts).pvalue, rel=1e-9)


def test_trend_report_is_written_and_linked(analysed):
    settings, _, instance = analysed
    path = trend_report_path(settings, DAY, "search-ranking", "assigned")
    page = path.read_text()
    # The cumulative lift, the scorecard's lift chart and every hourly metric (Plotly).
    assert page.count('<figure class="chart') == 2 + len(CHARTED)
    assert "variant-a vs control" in page and "variant-b vs control" in page
    event = instance.get_latest_materialization_event(dg.AssetKey("trend_reports"))
    metadata = event.asset_materialization.metadata
    assert metadata["report_search-ranking.assigned"].value == f"file://{path}"
    assert metadata["reports"].value == 6


def test_reconciliation_check_reports_the_drift(analysed):
    _, _, instance = analysed
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("experiment_metrics"), "speed_batch_reconciliation")]
    )
    (execution,) = checks.values()
    evaluation = execution.event.dagster_event.event_specific_data
    run = instance.get_run_by_id(execution.run_id)
    assert run.tags["dagster/partition"] == "2026-03-02-22"
    assert evaluation.passed is False
    metadata = evaluation.metadata
    assert metadata["drift_orders"].value == pytest.approx(0.1, abs=1e-6)
    assert metadata["drift_visits"].value == 0.0


def test_a_failed_reconciliation_check_is_alerted_once(analysed, mailbox, webhook):
    _, _, instance = analysed
    alerts = AlertsResource(
        smtp=mailbox.address, mail_to="oncall@example.com", webhook_url=webhook.url
    )

    def tick(cursor):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"alerts": alerts}
        )
        return alert_on_failed_check(context), context.cursor

    _, cursor = tick(None)
    (message,) = mailbox.wait_for(1)
    # Of the four evaluations of 22:00 and its neighbours, only the one with speed points 10%
    # off failed; metric_sanity passed everywhere.
    assert message["Subject"] == (
        "[expo warning] 1 asset check(s) failed: speed_batch_reconciliation"
    )
    text = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert text.startswith(
        "experiment_metrics:speed_batch_reconciliation [2026-03-02-22]: over 2.00%: orders\n"
    )
    (body,) = webhook.bodies
    assert "speed_batch_reconciliation" in body["text"]
    # The next tick has nothing new to say.
    result, again = tick(cursor)
    assert again == cursor and isinstance(result, dg.SkipReason)
    assert len(mailbox.wait_for(2, timeout=1.0)) == 1


def test_expo_scorecard_command(analysed, capsys, monkeypatch):
    settings, _, _ = analysed
    monkeypatch.setenv("EXPO_LAKE", str(settings.lake.root))
    argv = ["scorecard", "--experiment", "checkout-button", "--format", "json"]
    assert cli.main(argv) == 0
    card = json.loads(capsys.readouterr().out)
    saved = json.loads(scorecard_path(settings, DAY, "checkout-button", "assigned").read_text())
    assert card == saved
    assert cli.main(["scorecard", "--experiment", "checkout-button", "--to", "2026-03-01"]) == 2
    assert "no visitor_daily days" in capsys.readouterr().err
    assert cli.main(["scorecard", "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expo: error: experiment 'nope' has no assigned visitors")
    assert cli.main(["scorecard", "--experiment", "aa-check", "--population", "qualified"]) == 0
    table = capsys.readouterr().out
    assert "control-b" in table and "bounce_rate" in table and "sample-ratio test" in table


VISITOR_SUMS_CHECK = dg.AssetCheckKey(
    dg.AssetKey("visitor_daily"), "visitor_sums_equal_hourly_metrics"
)


def _latest_evaluation(instance, key: dg.AssetCheckKey):
    (execution,) = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key]
    ).values()
    return execution.event.dagster_event.event_specific_data, execution.run_id


def test_visitor_daily_that_does_not_add_up_stops_the_scorecards_and_alerts(
    analysed,
    mailbox,
    webhook,
):
    settings, _, instance = analysed
    evaluation, _ = _latest_evaluation(instance, VISITOR_SUMS_CHECK)
    assert evaluation.passed is True
    assert evaluation.metadata["keys_checked"].value == 14
    # One visit more in the store than the day's visitors have: either table may be wrong,
    # and the scorecards must not be built on it.
    with MetricStore(settings.lake.metric_store) as store:
        (point,) = store.query(
            layer="batch",
            experiment="checkout-button",
            metrics=["visits"],
            hour_from="2026-03-02T22:00:00Z",
            hour_to="2026-03-02T22:00:00Z",
            quality=False,
        )[:1]
        store.upsert([Point(*dataclasses.astuple(point)[:6], point.value + 1)])
    try:
        job = build_defs(settings).resolve_job_def("daily_analysis")
        result = job.execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
        )
    finally:
        with MetricStore(settings.lake.metric_store) as store:
            store.upsert([point])
    assert not result.success
    evaluation, run_id = _latest_evaluation(instance, VISITOR_SUMS_CHECK)
    assert run_id == result.run_id and evaluation.passed is False
    key = f"{point.experiment}/{point.variant}/{point.population}"
    assert evaluation.metadata["first_mismatches"].value.startswith(f"{key} visits: visitors")
    assert evaluation.metadata["mismatches"].value == 1
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    # Held back: no scorecards, no trend reports (visitor_totals does not wait on the check).
    assert materialized == {"visitor_daily", "visitor_totals"}
    run = instance.get_run_by_id(result.run_id)
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    alerts = AlertsResource(
        smtp=mailbox.address, mail_to="oncall@example.com", webhook_url=webhook.url
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure.dagster_event,
        resources={"alerts": alerts},
    ).for_run_failure()
    alert_on_run_failure(context)
    (message,) = mailbox.wait_for(1)
    assert message["Subject"] == "[expo critical] run of daily_analysis failed (2026-03-02)"
    assert "daily_analysis" in webhook.bodies[0]["text"]
