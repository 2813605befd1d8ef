"""The speed layer in Dagster: its external assets, the freshness check and its alert."""

from __future__ import annotations

import json
import time

import dagster as dg

from assets.speed import freshness_result
from definitions import build_defs
from expo_platform.ops.supervision import speed_freshness
from resources import AlertsResource
from sensors.supervisor import alert_on_failed_check, speed_layer_events


def _progress(settings, key: str, max_ts: int | None) -> None:
    folder = settings.stream_dir / "progress"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "max_ts": max_ts, "messages": 12, "batch_seconds": 3.5, "done_ms": 1}
    (folder / f"{key}.json").write_text(json.dumps(record))


def test_the_stream_and_its_outputs_are_assets_upstream_of_the_batch_layer(settings):
    with dg.instance_for_test():  # resolving reads the current instance's definitions state
        graph = build_defs(settings).resolve_asset_graph()
    key = dg.AssetKey
    assert graph.get(key("landing_zone")).parent_keys == {key("kafka_beacons")}
    assert graph.get(key("speed_metrics")).parent_keys == {key("kafka_beacons")}
    assert key("landing_zone") in graph.get(key("beacons")).parent_keys
    assert key("speed_metrics") in graph.get(key("experiment_metrics")).parent_keys
    assert not graph.get(key("speed_metrics")).is_materializable  # the stream writes it
    assert graph.get(key("kafka_beacons")).kinds == {"kafka"}


def test_freshness_follows_the_newest_micro_batch(settings):
    now = time.time()
    assert freshness_result(speed_freshness(settings), settings, now).passed is False
    _progress(settings, "0000-00000007", int((now - 20 * 60) * 1000))
    _progress(settings, "0000-00000010", int((now - 3 * 60) * 1000))  # newest: sorted by key
    fresh = speed_freshness(settings)
    assert fresh.last_batch == "0000-00000010" and fresh.messages == 12
    result = freshness_result(fresh, settings, now)
    assert result.passed is True and result.metadata["behind_minutes"].value == 3.0
    later = freshness_result(
        fresh, settings, now + (settings.supervisor.speed_stale_minutes - 2) * 60
    )
    assert later.passed is False  # 3 + 15 - 2 = 16 minutes behind
    assert "16.0 min behind the clock (limit 15 min)" in later.description


def test_a_stale_stream_is_alerted_once_not_every_tick(settings, mailbox, webhook):
    alerts = AlertsResource(
        smtp=mailbox.address, mail_to="oncall@example.com", webhook_url=webhook.url
    )
    now = time.time()
    _progress(settings, "0000-00000001", int((now - 60 * 60) * 1000))
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(at: float) -> None:
            # What the supervisor records each tick, as a sensor's runless events.
            for event in speed_layer_events(settings, at, None):
                instance.report_runless_asset_event(event)

        def alert(cursor):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"alerts": alerts}
            )
            return alert_on_failed_check(context), context.cursor

        tick(now)
        tick(now + 60)  # still stale: the same failure, no second alert
        _, cursor = alert(None)
        (message,) = mailbox.wait_for(1)
        assert "speed_metrics_fresh" in message["Subject"]
        tick(now + 120)
        result, cursor = alert(cursor)
        assert isinstance(result, dg.SkipReason) and len(mailbox.wait_for(2, timeout=1.0)) == 1
        # Fresh again, then stale again: a new alert.
        _progress(settings, "0000-00000002", int((now + 180) * 1000))
        tick(now + 180)
        tick(now + 180 + 20 * 60)
        alert(cursor)
        assert len(mailbox.wait_for(2)) == 2
