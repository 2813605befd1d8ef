"""Alerts for the on-call engineer: SMTP e-mail and a Slack-compatible webhook.

Sending never raises: a channel that fails is logged and reported in the result, so that an
outage of the mail server cannot stop a restart or hide the next alert.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage

log = logging.getLogger("expo_platform.ops.alerts")

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Alert:
    """What happened, in a subject line and a few figures."""

    subject: str
    text: str
    severity: str = "warning"  # info, warning or critical
    fields: dict[str, str] = field(default_factory=dict)

    def body(self) -> str:
        lines = [self.text, ""]
        lines += [f"{k}: {v}" for k, v in self.fields.items()]
        return "\n".join(lines).strip() + "\n"

    def slack(self) -> dict:
        """A Slack-compatible webhook body: `text` plus blocks with the figures."""
        title = f"[expo {self.severity}] {self.subject}"
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": self.text}},
        ]
        if self.fields:
            blocks.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{k}*\n{v}"}
                        for k, v in list(self.fields.items())[:10]
                    ],
                }
            )
        return {"text": f"{title}: {self.text}", "blocks": blocks}


@dataclass(frozen=True)
class Channels:
    """Where alerts go; an empty setting turns its channel off."""

    smtp_host: str = ""
    smtp_port: int = 25
    mail_from: str = "expo@localhost"
    mail_to: tuple[str, ...] = ()
    smtp_user: str = ""
    smtp_password: str = ""  # from the environment only
    webhook_url: str = ""  # may carry a token: from the environment only


def send(alert: Alert, channels: Channels) -> dict[str, str]:
    """Deliver on every configured channel; returns {channel: "sent" or the error}."""
    results: dict[str, str] = {}
    if channels.smtp_host and channels.mail_to:
        results["email"] = _guard("email", lambda: _email(alert, channels))
    if channels.webhook_url:
        results["webhook"] = _guard("webhook", lambda: _webhook(alert, channels.webhook_url))
    if not results:
        log.warning("no alert channel configured; alert: %s", alert.subject)
    for channel, outcome in results.items():
        level = logging.INFO if outcome == "sent" else logging.ERROR
        log.log(level, "alert %s via %s: %s", alert.subject, channel, outcome)
    return results


def _guard(channel: str, action) -> str:
    try:
        action()
        return "sent"
    except (OSError, smtplib.SMTPException, urllib.error.URLError) as exc:
        return f"failed: {exc}"


def _email(alert: Alert, channels: Channels) -> None:
    message = EmailMessage()
    message["Subject"] = f"[expo {alert.severity}] {alert.subject}"
    message["From"] = channels.mail_from
    message["To"] = ", ".join(channels.mail_to)
    message.set_content(alert.body())
    with smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=TIMEOUT_S) as smtp:
        if channels.smtp_user:
            smtp.starttls()
            smtp.login(channels.smtp_user, channels.smtp_password)
        smtp.send_message(message)


def _webhook(alert: Alert, url: str) -> None:
    request = urllib.request.Request(
        url,
        json.dumps(alert.slack()).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.status >= 300:
            raise OSError(f"the webhook answered HTTP {response.status}")
