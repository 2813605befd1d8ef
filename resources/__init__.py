"""Dagster resources: the library settings, the metric store, alerts and the stream launcher.

Everything comes from one `Settings` object (`build_resources(settings)`); nothing here reads
the environment. Secrets are the exception by design: they never enter the settings, and
Dagster reads them through `dg.EnvVar` when a run or tick uses the resource.
"""

from __future__ import annotations

import dagster as dg
from dagster_pyspark import PySparkResource

from expo_platform.ops.alerts import Alert, Channels, send
from expo_platform.ops.supervision import StreamLauncher, stream_launcher
from expo_platform.serving.store import MetricStore
from expo_platform.settings import Settings

# Assets and sensors declare `settings: SettingsParam` to receive the code location's settings.
SettingsParam = dg.ResourceParam[Settings]


class MetricStoreResource(dg.ConfigurableResource):
    """The metric store; a URL with a password comes through `dg.EnvVar`."""

    url: str

    def open(self) -> MetricStore:
        """A connected store; close it (or use it in a `with` block) when done."""
        return MetricStore(self.url)


class AlertsResource(dg.ConfigurableResource):
    """E-mail (SMTP) and a Slack-compatible webhook; the webhook URL and the SMTP password
    are secrets (EXPO_ALERT_WEBHOOK_URL, EXPO_SMTP_PASSWORD), given as `dg.EnvVar`."""

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
    """Starts and stops the streaming app, recorded by pid files in EXPO_SERVICES_DIR: a
    local background process, or spark-submit to the standalone master (EXPO_STREAM_LAUNCHER)."""

    def launcher(self, settings: Settings) -> StreamLauncher:
        return stream_launcher(settings)


def _secret(settings: Settings, name: str, otherwise: str = "") -> str | dg.EnvVar:
    """The secret variable `name` for Dagster to read at run time, when the settings saw it
    set; else `otherwise`."""
    return dg.EnvVar(name) if name in settings.secrets else otherwise


def build_resources(settings: Settings) -> dict:
    """The resources of the code location, from the library settings."""
    alerts = settings.alerts
    return {
        "settings": dg.ResourceDefinition.hardcoded_resource(settings, "the Expo settings"),
        "pyspark": PySparkResource(spark_config=settings.batch_session_config()),
        "metric_store": MetricStoreResource(
            url=_secret(settings, "EXPO_METRIC_STORE", settings.lake.metric_store)
        ),
        "alerts": AlertsResource(
            smtp=alerts.smtp,
            mail_from=alerts.email_from,
            mail_to=alerts.email_to,
            smtp_user=alerts.smtp_user,
            smtp_password=_secret(settings, "EXPO_SMTP_PASSWORD"),
            webhook_url=_secret(settings, "EXPO_ALERT_WEBHOOK_URL"),
        ),
        "stream_launcher": StreamLauncherResource(),
    }
