"""Dagster resources: thin, typed wrappers around the library's settings and stores."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource

from expo_platform.ops.alerts import Alert, Channels, send
from expo_platform.ops.supervision import StreamLauncher, stream_launcher
from expo_platform.serving.store import MetricStore
from expo_platform.settings import Settings, load_settings


class ExpoResource(dg.ConfigurableResource):
    """Where the lake and the Hive tables are, and the batch layer's thresholds."""

    lake: str
    hive_database: str = "expo"
    max_reject_rate: float = 0.1

    def settings(self) -> Settings:
        """The library settings: the environment's, with this resource's fields on top."""
        return load_settings(
            lake=Path(self.lake),
            hive_database=self.hive_database,
            max_reject_rate=self.max_reject_rate,
        )


class MetricStoreResource(dg.ConfigurableResource):
    """The metric store; the URL may carry a password, so it comes from the environment."""

    url: str

    def open(self) -> MetricStore:
        """A connected store; close it (or use it in a `with` block) when done."""
        return MetricStore(self.url)


class AlertsResource(dg.ConfigurableResource):
    """E-mail (SMTP) and a Slack-compatible webhook; the webhook URL and the SMTP password
    come from the environment only (EXPO_ALERT_WEBHOOK_URL, EXPO_SMTP_PASSWORD)."""

    smtp: str = ""  # host:port, empty for no e-mail
    mail_from: str = "expo@localhost"
    mail_to: str = ""  # comma-separated
    smtp_user: str = ""
    smtp_password: str = ""
    webhook_url: str = ""

    def send(self, alert: Alert) -> dict[str, str]:
        """Deliver on every configured channel; {channel: "sent" or the error}."""
        host, _, port = self.smtp.partition(":")
        channels = Channels(
            smtp_host=host,
            smtp_port=int(port or 25),
            mail_from=self.mail_from,
            mail_to=tuple(a.strip() for a in self.mail_to.split(",") if a.strip()),
            smtp_user=self.smtp_user,
            smtp_password=self.smtp_password,
            webhook_url=self.webhook_url,
        )
        return send(alert, channels)


class StreamLauncherResource(dg.ConfigurableResource):
    """Starts and stops the streaming app, recorded by pid files in EXPO_SERVICES_DIR, with
    this process's EXPO_* environment: a local background process, or spark-submit to the
    standalone master (EXPO_STREAM_LAUNCHER)."""

    def launcher(self, settings: Settings) -> StreamLauncher:
        return stream_launcher(settings)


def _secret(name: str):
    """An environment variable read at run time, or empty when it is not set."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def build_resources(settings: Settings) -> dict:
    """The resources of the code location, from the library settings."""
    return {
        "pyspark": PySparkResource(spark_config=settings.spark_config()),
        "expo": ExpoResource(
            lake=str(settings.lake),
            hive_database=settings.hive_database,
            max_reject_rate=settings.max_reject_rate,
        ),
        "metric_store": MetricStoreResource(
            url=dg.EnvVar("EXPO_METRIC_STORE")
            if os.environ.get("EXPO_METRIC_STORE")
            else settings.metric_store
        ),
        "alerts": AlertsResource(
            smtp=settings.alert_smtp,
            mail_from=settings.alert_email_from,
            mail_to=settings.alert_email_to,
            smtp_user=os.environ.get("EXPO_SMTP_USER", ""),
            smtp_password=_secret("EXPO_SMTP_PASSWORD"),
            webhook_url=_secret("EXPO_ALERT_WEBHOOK_URL"),
        ),
        "stream_launcher": StreamLauncherResource(),
    }
