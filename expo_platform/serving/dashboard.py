"""The experimenters' live dashboard: `expo dashboard`, a small web app on loopback.

Pages (HTML, each polling its JSON twin every `EXPO_DASHBOARD_REFRESH_SECONDS`):

- `/`: the experiments (variants, traffic split, days running, sample-ratio flag, rolling
  visitors), data quality per hour (rejects by reason, duplicates, late beacons) and the
  speed-versus-batch drift of the reconciliation check; JSON at `/api/overview`;
- `/experiment/<name>?population=assigned|qualified&hours=N`: the rolling 1-hour and
  24-hour visitors, the latest scorecard with its lift chart, and the hourly trend of every
  metric by variant from the merged view (batch solid, speed dashed, the open hour shaded);
  JSON at `/api/experiment/<name>`;
- `/static/plotly-<version>.min.js`: plotly.js from the installed `plotly` package (no CDN:
  the machines are offline); `/healthz`: `ok`.

The figures are built in Python (`expo_platform.analysis.charts` and its figure modules,
`hourly_charts` and `lift_charts`, shared with the daily trend reports) and drawn in the
browser with `Plotly.react`, so a poll that brings new points redraws in place and keeps the
reader's zoom. Reads go through `MetricStore` only (SQLite or
PostgreSQL alike): one store per server, each read a short transaction of its own (SQLite in
WAL mode, PostgreSQL MVCC), so the dashboard never holds a lock that blocks the writers. The
scorecards are the daily analysis' JSON files (`report_files.latest_scorecard`).

This module is the server and its routes; what the pages show is read in `dashboard_data`,
put into documents in `dashboard_documents` (with the HTML pieces of `dashboard_fragments`),
and the pages themselves are in `dashboard_pages`.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from plotly.io.json import to_json_plotly

from expo_platform.analysis import charts
from expo_platform.errors import ExpoError, StoreError
from expo_platform.serving.dashboard_data import (
    DEFAULT_WINDOW,
    POPULATIONS,
    WINDOWS,
    UnknownExperiment,
)
from expo_platform.serving.dashboard_documents import Dashboard
from expo_platform.serving.dashboard_pages import experiment_page, overview_page, problem_page
from expo_platform.settings import LOOPBACK, Settings

log = logging.getLogger(__name__)


def check_loopback(host: str) -> str:
    """The host as an address to bind, if it is a loopback one: the dashboard has no login,
    so it listens on this machine only."""
    if host == "localhost":
        return LOOPBACK
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ExpoError(
            f"the dashboard listens on loopback only (it has no login): --host must be "
            f"127.0.0.1, ::1 or localhost, not {host!r}"
        )
    return str(address)


def dashboard_url(settings: Settings, host: str = LOOPBACK, port: int | None = None) -> str:
    """Where `expo dashboard` (with these settings) is reached: for `make up` to print."""
    port = settings.local.dashboard_port if port is None else port
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


# -- the server ---------------------------------------------------------------------------


class DashboardServer(ThreadingHTTPServer):
    """The dashboard's HTTP server: one thread per request, on a loopback address."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dashboard: Dashboard, host: str, port: int) -> None:
        address = check_loopback(host)
        if ":" in address:
            self.address_family = socket.AF_INET6
        self.dashboard = dashboard
        super().__init__((address, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return dashboard_url(self.dashboard.settings, host, port)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "expo-dashboard"
    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug(
            "request",
            extra={
                "method": self.command,
                "path": self.path,
                "status": getattr(code, "value", code),
            },
        )

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.warning("bad request", extra={"error": format % args})

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8", Cache_Control="no-store")

    def _json(self, status: int, doc: dict) -> None:
        body = to_json_plotly(doc).encode()
        self._send(status, body, "application/json", Cache_Control="no-store")

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        dashboard = self.server.dashboard
        api = path.startswith("/api/")
        try:
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8", Cache_Control="no-store")
            elif path.startswith("/static/plotly") and path.endswith(".min.js"):
                self._static_plotly(path)
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path == "/":
                self._html(200, overview_page(dashboard))
            elif path == "/api/overview":
                self._json(200, dashboard.overview())
            elif path.startswith(("/experiment/", "/api/experiment/")):
                self._experiment(unquote(path.rsplit("/", 1)[1]), query, api)
            else:
                self._not_found(api, "No such page", f"There is no page at {path}.")
        except UnknownExperiment as exc:
            self._not_found(api, "Unknown experiment", str(exc))
        except StoreError as exc:
            log.warning("dashboard cannot read the metric store", extra={"error": str(exc)})
            if api:
                self._json(503, {"error": str(exc)})
            else:
                self._html(
                    503,
                    problem_page(
                        dashboard,
                        "The metric store cannot be read",
                        str(exc),
                        "<p>Check <code>EXPO_METRIC_STORE</code> (<code>expo settings</code>) "
                        "and reload this page.</p>",
                    ),
                )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer
        except Exception:
            log.exception("dashboard request failed", extra={"path": path})
            message = "The dashboard failed on this request; its log has the details."
            if api:
                self._json(500, {"error": message})
            else:
                self._html(500, problem_page(dashboard, "Internal error", message))

    def _not_found(self, api: bool, title: str, message: str) -> None:
        if api:
            self._json(404, {"error": message})
        else:
            self._html(404, problem_page(self.server.dashboard, title, message))

    def _experiment(self, name: str, query: dict, api: bool) -> None:
        dashboard = self.server.dashboard
        population = query.get("population", ["assigned"])[0]
        if population not in POPULATIONS:
            self._not_found(
                api,
                "Unknown population",
                f"population must be assigned or qualified, not {population!r}",
            )
            return
        try:
            hours = int(query.get("hours", [DEFAULT_WINDOW])[0])
        except ValueError:
            hours = DEFAULT_WINDOW
        hours = hours if hours in WINDOWS else DEFAULT_WINDOW
        if api:
            self._json(200, dashboard.experiment_page(name, population, hours))
        else:
            exp = dashboard.experiment(name)
            self._html(200, experiment_page(dashboard, exp, population, hours))

    def _static_plotly(self, path: str) -> None:
        version = charts.plotly_js_version()
        if path not in (f"/static/plotly-{version}.min.js", "/static/plotly.min.js"):
            self._not_found(False, "No such file", f"There is no file at {path}.")
            return
        body = _plotly_bytes()
        self._send(
            200,
            body,
            "text/javascript; charset=utf-8",
            Cache_Control="public, max-age=31536000, immutable",
        )


_PLOTLY_BYTES: bytes | None = None


def _plotly_bytes() -> bytes:
    global _PLOTLY_BYTES
    if _PLOTLY_BYTES is None:
        _PLOTLY_BYTES = charts.plotly_js_path().read_bytes()
    return _PLOTLY_BYTES


def make_server(settings: Settings, host: str = LOOPBACK, port: int | None = None):
    """A dashboard server bound to a loopback address (port 0: a free one), not yet serving:
    call `serve_forever()` (tests run it in a thread), then `shutdown()` and
    `server_close()`."""
    port = settings.local.dashboard_port if port is None else port
    dashboard = Dashboard(settings)
    try:
        return DashboardServer(dashboard, host, port)
    except OSError as exc:
        raise ExpoError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(settings: Settings, host: str = LOOPBACK, port: int | None = None) -> None:
    """`expo dashboard`: serve until interrupted (Ctrl-C or SIGTERM)."""
    server = make_server(settings, host, port)
    dashboard = server.dashboard
    stop = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if stop else None
    log.info(
        "dashboard serving",
        extra={"url": server.url, "store": dashboard.store_label},
    )
    print(f"dashboard on {server.url} (metric store {dashboard.store_label})", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except SystemExit:
        pass
    finally:
        server.server_close()
        dashboard.close()
        if stop:
            signal.signal(signal.SIGTERM, previous)
        log.info("dashboard stopped", extra={"url": server.url})


def _terminate(signum, frame) -> None:
    raise SystemExit(0)
