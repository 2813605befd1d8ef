"""The streaming supervisor against a real streaming app: its Spark UI REST API, Kafka lag in
ZooKeeper, a restart through the restart job, the restart budget, and the alerts (real SMTP
and webhook receivers)."""

from __future__ import annotations

import json
import os
import signal
import time

import dagster as dg
import pytest

from definitions import build_defs
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig, iter_lines
from expo_platform.ops.supervision import LocalLauncher, observe_ui
from expo_platform.settings import load_settings
from expo_platform.speed.offsets import ZkOffsets
from tests.fixtures_services import new_topic
from tests.helpers import stream_env, supervisor_tick, wait

LINES = [
    line
    for _, line, _ in iter_lines(
        GeneratorConfig(start=parse_hour("2026-03-02T10"), hours=1, visitors=60, seed=3)
    )
]


WEBHOOK_TOKEN = "T0KEN-b7f3c1-not-for-logs"
SMTP_PASSWORD = "smtp-pa55-4e9d-not-for-logs"


def _kill(launcher: LocalLauncher, settings) -> None:
    """kill -9 the app and its JVM (its process group), as a crash would."""
    os.killpg(launcher.recorded().pid, signal.SIGKILL)
    ui = f"127.0.0.1:{settings.stream.ui_port}"
    wait(lambda: not launcher.alive() and not observe_ui(ui, 0).ui_reachable, 60, "the app to go")


@pytest.mark.slow
def test_supervisor_restarts_a_killed_app_then_only_alerts(
    tmp_path,
    monkeypatch,
    kafka,
    zookeeper,
    mailbox,
    webhook,
    capfd,
):
    topic = new_topic(kafka, "sup", 2, LINES)
    env = {
        **stream_env(tmp_path, kafka, zookeeper, topic, mailbox, webhook),
        "EXPO_RESTARTS_PER_HOUR": "1",
        # Secrets: the webhook's URL carries its token, as Slack's do; the SMTP password is
        # set (without a login, which the test receiver cannot do over TLS).
        "EXPO_ALERT_WEBHOOK_URL": f"{webhook.url}/{WEBHOOK_TOKEN}",
        "EXPO_SMTP_PASSWORD": SMTP_PASSWORD,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    settings.lake.root.mkdir()
    defs = build_defs(settings)
    launcher = LocalLauncher(settings)
    launcher.start()
    try:

        def caught_up() -> bool:
            with ZkOffsets(settings.stream.zookeeper, settings.stream.consumer) as zk:
                return sum(zk.read(topic).values()) == len(LINES)

        wait(caught_up, 180, "the app to commit every offset")
        seen = observe_ui(f"127.0.0.1:{settings.stream.ui_port}", time.time())
        assert seen.ui_reachable and seen.app_running and seen.app_id
        assert seen.succeeded_jobs > 0 and seen.failed_jobs == 0

        with dg.DagsterInstance.ephemeral() as instance:
            events: list = []
            result, cursor = supervisor_tick(defs, instance, events=events)
            assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("ok")
            # Every tick records what it saw on the speed layer's external assets.
            observed = {
                e.asset_key.to_user_string(): {k: v.value for k, v in e.metadata.items()}
                for e in events
                if isinstance(e, dg.AssetObservation)
            }
            assert observed["kafka_beacons"]["lag"] == 0
            assert observed["speed_metrics"]["last_batch"].startswith("0000-")
            assert observed["speed_metrics"]["app_running"] is True
            assert observed["landing_zone"]["newest_hour"] == "2026-03-02-10"
            # The traffic is of March 2026: far behind the clock, so the check fails.
            (check,) = [e for e in events if isinstance(e, dg.AssetCheckEvaluation)]
            assert check.check_name == "speed_metrics_fresh" and check.passed is False
            assert observed["speed_metrics"]["behind_minutes"] > 60
            state = json.loads(cursor)
            assert state["action"] == "ok" and state["seen"]["lag"] == 0
            assert state["seen"]["app_id"] == seen.app_id

            _kill(launcher, settings)
            request, cursor = supervisor_tick(defs, instance, cursor)
            assert isinstance(request, dg.RunRequest), request
            assert "absent or finished" in request.tags["expo/reasons"]

            restart = defs.resolve_job_def("restart_streaming")
            assert restart.execute_in_process(instance=instance, tags=request.tags).success
            assert launcher.alive()
            after = observe_ui(f"127.0.0.1:{settings.stream.ui_port}", time.time())
            assert after.app_running and after.app_id
            mailbox.wait_for(1)
            assert mailbox.subjects() == ["[expo warning] streaming app restarted"]
            assert "absent or finished" in webhook.bodies[0]["text"] + json.dumps(
                webhook.bodies[0]["blocks"]
            )

            # The budget (one restart an hour) is spent: the next death only alerts.
            _kill(launcher, settings)
            result, cursor = supervisor_tick(defs, instance, cursor)
            assert isinstance(result, dg.SkipReason)
            assert "restart budget of 1 per hour exhausted" in result.skip_message
            mailbox.wait_for(2)
            assert mailbox.subjects()[1] == "[expo critical] streaming app unhealthy, not restarted"
            assert not launcher.alive()

            # No secret in the alerts, the runs' event logs and metadata, or any log.
            runs = instance.get_runs()
            assert runs
            seen = [m.as_string() for m in mailbox.messages]
            seen += [json.dumps(body) for body in webhook.bodies]
            seen += [str(event) for run in runs for event in instance.all_logs(run.run_id)]
            seen += [json.dumps(run.run_config) + json.dumps(run.tags) for run in runs]
            seen += [cursor or "", str(result)]
            seen += [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
            seen += list(capfd.readouterr())
            assert len(seen) > 10 and any("streaming app" in text for text in seen)
            for secret in (WEBHOOK_TOKEN, SMTP_PASSWORD):
                assert not [text[:200] for text in seen if secret in text], secret
    finally:
        launcher.stop(timeout=60)
