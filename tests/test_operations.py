"""Operations: the supervisor's rules, alerts over real SMTP and HTTP, the late-data sensor,
and alerts on failed runs."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from definitions import build_defs
from expo_platform.batch.late_data import changed_hours, redo_plan
from expo_platform.core.hours import hour_key, parse_hour
from expo_platform.errors import ExpoError
from expo_platform.ops.alerts import Alert, Channels, send
from expo_platform.ops.processes import free_port
from expo_platform.ops.supervision import Observation, State, Thresholds, decide
from expo_platform.settings import load_settings, settings_environ
from sensors.batch_runner import run_batch
from sensors.late_data import late_data_sensor
from sensors.supervisor import alert_on_run_failure
from tests.test_batch_layer import (  # noqa: F401 (batch_env is a fixture)
    H0,
    H1,
    H2,
    SCENARIO,
    batch_env,
    beacon,
    ts,
    values,
    write_landing,
)

LIMITS = Thresholds(stuck_task_s=600, max_lag=1000, slow_ticks=3, trigger_s=60, restarts_per_hour=2)
NOW = 1_800_000_000.0


def healthy(**changes) -> Observation:
    seen = Observation(
        ui_reachable=True,
        app_id="app-1",
        app_running=True,
        failed_jobs=0,
        succeeded_jobs=40,
        longest_task_s=3.0,
        lag=10,
        input_rate=100.0,
        processing_rate=250.0,
        latency_ms=4000.0,
        process_alive=True,
    )
    for k, v in changes.items():
        setattr(seen, k, v)
    return seen


def test_a_healthy_app_is_left_alone():
    decision = decide(healthy(), LIMITS, State(), NOW)
    assert (decision.action, decision.reasons) == ("ok", [])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ui_reachable": False, "process_alive": False}, "absent or finished"),
        ({"app_running": False}, "absent or finished"),
        ({"failed_jobs": 5, "succeeded_jobs": 4}, "5 failed against 4 succeeded"),
        ({"longest_task_s": 601.0}, "601s (stuck)"),
        ({"lag": 1001}, "lag 1,001 above 1,000"),
    ],
)
def test_each_rule_requests_a_restart(changes, reason):
    decision = decide(healthy(**changes), LIMITS, State(), NOW)
    assert decision.action == "restart"
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.state.restarts == [NOW]


def test_falling_behind_counts_only_ticks_in_a_row():
    slow = healthy(processing_rate=90.0)  # below the input rate
    state = State()
    actions = []
    for observation in (slow, slow, healthy(), slow, slow, healthy(latency_ms=61_000)):
        decision = decide(observation, LIMITS, state, NOW)
        actions.append((decision.action, decision.state.slow_ticks))
        state = decision.state
    assert actions == [("ok", 1), ("ok", 2), ("ok", 0), ("ok", 1), ("ok", 2), ("restart", 0)]


def test_the_restart_budget_turns_restarts_into_alerts():
    absent = healthy(app_running=False)
    state = State(restarts=[NOW - 4000, NOW - 1000, NOW - 10])  # one is older than an hour
    decision = decide(absent, LIMITS, state, NOW)
    assert decision.action == "alert"
    assert "restart budget of 2 per hour exhausted" in decision.reasons[-1]
    assert decision.state.restarts == [NOW - 1000, NOW - 10]
    later = decide(absent, LIMITS, decision.state, NOW + 2700)  # one restart aged out
    assert later.action == "restart"


def test_an_unreachable_ui_while_the_process_runs_is_an_alert_not_a_restart():
    decision = decide(healthy(ui_reachable=False, error="connection refused"), LIMITS, State(), NOW)
    assert decision.action == "alert"
    assert "unreachable while the process of the streaming app runs" in decision.reasons[0]


def test_an_alert_is_not_repeated_every_tick():
    blind = healthy(ui_reachable=False, error="connection refused")
    first = decide(blind, LIMITS, State(), NOW)
    again = decide(blind, LIMITS, State.from_cursor(first.cursor()), NOW + 60)
    later = decide(blind, LIMITS, again.state, NOW + 960)
    assert (first.notify, again.notify, later.notify) == (True, False, True)
    spent = State(restarts=[NOW - 10, NOW - 5])  # budget of 2 spent: a different alert
    other = decide(healthy(app_running=False), LIMITS, spent, NOW + 61)
    assert other.action == "alert" and other.notify


def test_the_cursor_keeps_state_and_figures():
    decision = decide(healthy(lag=5000), LIMITS, State(), NOW)
    again = State.from_cursor(decision.cursor())
    assert again.restarts == [NOW]
    assert '"lag": 5000' in decision.cursor() and "lag=5000" in decision.summary()


def test_a_restart_waits_for_the_old_apps_ui_port(tmp_path):
    """The old driver's JVM can hold the UI port a moment after its process is gone."""
    import socket
    import threading
    import time as clock

    from expo_platform.ops.supervision import restart
    from expo_platform.settings import load_settings

    port = free_port()
    held = socket.create_server(("127.0.0.1", port))
    threading.Timer(1.5, held.close).start()

    class Launcher:  # the old app stops at once, but its port is still taken
        settings = load_settings({"EXPO_STREAM_UI_PORT": str(port), "EXPO_HOME": str(tmp_path)})
        started_at = None

        def stop(self) -> bool:
            return True

        def start(self):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, "started on a taken port"
            self.started_at = clock.monotonic()
            return type("App", (), {"pid": 1})()

    launcher = Launcher()
    begun = clock.monotonic()
    was_running, app = restart(launcher)
    assert was_running and app.pid == 1 and launcher.started_at - begun >= 1.0


def test_alerts_reach_a_real_smtp_server_and_webhook(mailbox, webhook):
    host, port = mailbox.address.split(":")
    channels = Channels(
        smtp_host=host,
        smtp_port=int(port),
        mail_to=("oncall@example.com",),
        webhook_url=webhook.url,
    )
    alert = Alert("streaming app restarted", "lag too high", "warning", {"lag": "12,000"})
    assert send(alert, channels) == {"email": "sent", "webhook": "sent"}
    (message,) = mailbox.wait_for(1)
    assert message["Subject"] == "[expo warning] streaming app restarted"
    assert message["To"] == "oncall@example.com"
    assert "lag: 12,000" in message.get_payload()
    (body,) = webhook.bodies
    assert body["text"] == "[expo warning] streaming app restarted: lag too high"
    assert body["blocks"][2]["fields"][0]["text"] == "*lag*\n12,000"


def test_a_failing_channel_is_reported_not_raised(webhook):
    channels = Channels(
        smtp_host="127.0.0.1", smtp_port=free_port(), mail_to=("a@b",), webhook_url=webhook.url
    )
    results = send(Alert("x", "y"), channels)
    assert results["webhook"] == "sent"
    assert results["email"].startswith("failed:")


def test_redo_plan_covers_visits_and_metrics_that_read_the_hour():
    changed = parse_hour("2026-03-02T05")
    hours = [parse_hour("2026-03-02T00") + timedelta(hours=i) for i in range(30)]
    ingest, metrics = redo_plan(changed, hours, hours[:20])
    assert [hour_key(h) for h in (ingest[0], ingest[-1])] == ["2026-03-02-05", "2026-03-02-17"]
    assert len(ingest) == 13  # a visit from 05:xx lasts until 17:xx at most
    assert [hour_key(h) for h in (metrics[0], metrics[-1])] == ["2026-03-02-04", "2026-03-02-19"]
    assert changed_hours({changed: "a", hours[0]: "b"}, {changed: "a2", hours[0]: "b"}) == [changed]


def _sensor_requests(instance, defs) -> list[dg.RunRequest]:
    context = dg.build_sensor_context(
        instance=instance, resources={"settings": defs.resources["settings"]}
    )
    result = late_data_sensor(context)
    return result if isinstance(result, list) else []


def test_late_data_sensor_redoes_a_changed_hour_and_what_depends_on_it(batch_env):  # noqa: F811
    settings = batch_env
    for hour, lines in SCENARIO.items():
        write_landing(settings, hour, lines)
    defs = build_defs(settings)
    run_batch(defs, H0, H2, progress=lambda line: None)
    with dg.DagsterInstance.get() as instance:
        assert _sensor_requests(instance, defs) == []  # nothing changed since
        write_landing(settings, H1, [beacon("late1", "v7", "s7", ts(H1, 30))], "late.json")
        requests = _sensor_requests(instance, defs)
        planned = [(r.job_name, r.partition_key) for r in requests]
        # Ingest H1 and the ingested hours after it (H2, H3), then the metrics of H0..H2.
        assert planned == [
            ("hourly_ingest", "2026-03-02-01"),
            ("hourly_ingest", "2026-03-02-02"),
            ("hourly_ingest", "2026-03-02-03"),
            ("hourly_metrics", "2026-03-02-00"),
            ("hourly_metrics", "2026-03-02-01"),
            ("hourly_metrics", "2026-03-02-02"),
        ]
        assert len({r.run_key for r in requests}) == 6
        # Run them in that order, as the queue would: the late beacon is counted, and the
        # sensor is quiet again.
        for request in requests:
            job = defs.resolve_job_def(request.job_name)
            assert job.execute_in_process(
                instance=instance, partition_key=request.partition_key
            ).success
        assert _sensor_requests(instance, defs) == []
    assert values(settings)[("visitors", "exp", "A", "assigned", "2026-03-02T01:00:00Z")] == 3.0


def test_a_failed_run_is_alerted(batch_env, mailbox, webhook, monkeypatch):  # noqa: F811
    settings = batch_env
    write_landing(settings, H0, [beacon("a1", "v1", "s1", ts(H0, 1)), "{bad", "{bad2", "[]"])
    # The webhook URL is a secret: the settings know it is set, Dagster reads it at run time.
    monkeypatch.setenv("EXPO_ALERT_WEBHOOK_URL", webhook.url)
    strict = load_settings(
        {
            **settings_environ(settings),
            "EXPO_MAX_REJECT_RATE": "0.1",
            "EXPO_ALERT_SMTP": mailbox.address,
            "EXPO_ALERT_EMAIL_TO": "oncall@example.com",
            "EXPO_ALERT_WEBHOOK_URL": webhook.url,
        }
    )
    defs = build_defs(strict)
    with pytest.raises(ExpoError, match="blocking asset check failed"):
        run_batch(defs, H0, H0, progress=lambda line: None)
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="alert_on_run_failure",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure.dagster_event,
            resources={"alerts": defs.resources["alerts"]},
        ).for_run_failure()
        alert_on_run_failure(context)
    (message,) = mailbox.wait_for(1)
    assert message["Subject"] == "[expo critical] run of hourly_ingest failed (2026-03-02-00)"
    (body,) = webhook.bodies
    assert "hourly_ingest" in body["text"]
