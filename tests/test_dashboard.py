"""The experimenters' dashboard (`expo dashboard`) in Debian's Chromium through Playwright.

The store is seeded through MetricStore (no Spark): both layers of an A/B experiment, a
one-variant experiment, data quality, rolling visitors and a scorecard file
(`tests/dashboard_data.py`). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, sync_playwright

from expo_platform.analysis import charts, hourly_charts
from expo_platform.serving.dashboard import check_loopback, make_server
from expo_platform.serving.store import MetricStore, Point
from expo_platform.settings import Settings, load_settings
from tests import dashboard_data as data
from tests.helpers import ARTIFACTS, CHROMIUM, PROJECT

# The brief's flags: headless, and nothing of Chromium's own reaching the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
REQUESTS: list[str] = []  # every request of every page of this module


def _settings(root, **extra: str) -> Settings:
    return load_settings(
        {
            "EXPO_HOME": str(root),
            "EXPO_LAKE": str(root / "lake"),
            "EXPO_DASHBOARD_REFRESH_SECONDS": "1",
            **extra,
        }
    )


class Running:
    """A dashboard server on a free loopback port, serving in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = make_server(settings, "127.0.0.1", 0)
        self.url = self.server.url.rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, body[:500]
        return json.loads(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.dashboard.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Settings:
    settings = _settings(tmp_path_factory.mktemp("dashboard"))
    data.seed(settings)
    return settings


@pytest.fixture(scope="module")
def dashboard(seeded) -> Iterator[Running]:
    running = Running(seeded)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make system`")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A page whose every request is recorded; none may leave loopback."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    REQUESTS.extend(seen)
    assert errors == []
    assert [u for u in seen if urlsplit(u).hostname not in LOOPBACK_HOSTS] == []


def _open(page: Page, url: str, updates: int = 1):
    """Go to a live page and wait until it has drawn `updates` documents."""
    response = page.goto(url)
    page.wait_for_function(
        f"Number(document.body.dataset.updates || 0) >= {updates}", timeout=30_000
    )
    return response


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def _traces(page: Page, div_id: str) -> list[dict]:
    """The traces plotly.js drew in a chart: name, dash, x and y."""
    return page.evaluate(
        """id => document.getElementById(id).data.map(t => ({
            name: t.name, dash: (t.line || {}).dash, x: t.x, y: t.y}))""",
        div_id,
    )


def test_the_overview_lists_the_experiments_quality_and_drift(page, dashboard):
    response = _open(page, dashboard.url + "/")
    assert response.status == 200
    table = page.locator("table.experiments")
    assert table.locator("tbody tr").count() == 2
    row = table.locator("tbody tr", has_text=data.AB)
    text = row.inner_text()
    assert "control" in text and "treatment" in text
    assert "50.0%" in text  # the scorecard's 3,000 visitors each
    assert "1.0" in text  # days running: 00:00 to the end of 23:00
    assert "923" in text and "10,153" in text  # rolling visitors of both variants, 23:30
    assert "ok (p = 1)" in text
    assert "one variant" in table.locator("tbody tr", has_text=data.SOLO).inner_text()
    # Quality: rejects by reason, duplicates and late beacons, stacked per hour.
    names = {t["name"] for t in _traces(page, "quality-chart")}
    assert {"late", "duplicate", "rejected: malformed_json"} <= names
    assert page.locator("table.quality tbody tr").count() == 12
    # Drift: the hours both layers wrote (18-21); 20:00 is 10% off in orders.
    drift = _traces(page, "drift-chart")
    assert drift[0]["x"] == [f"2026-03-02 {h}:00" for h in (18, 19, 20, 21)]
    assert "1 of 4 hour(s) drift beyond the tolerance" in page.inner_text("#drift-table")
    assert "orders" in page.inner_text("#drift-table")
    _shot(page, "dashboard_overview.png")


def test_an_experiment_shows_trends_scorecard_and_rolling_visitors(page, dashboard):
    response = _open(page, f"{dashboard.url}/experiment/{data.AB}")
    assert response.status == 200
    # Every metric charted, from the merged view: each variant solid (batch) then dashed
    # (speed, from the hand-over at 21:00 to the open hour 23:00).
    assert page.locator("#trends .chart").count() == len(charts.CHARTED)
    traces = _traces(page, "trend-visitors")
    assert [(t["name"], t["dash"]) for t in traces] == [
        ("control", "solid"),
        ("control (speed)", "dash"),
        ("treatment", "solid"),
        ("treatment (speed)", "dash"),
    ]
    batch, speed = traces[0], traces[1]
    assert batch["x"][0] == "2026-03-02 00:00" and batch["x"][-1] == "2026-03-02 23:00"
    assert batch["y"][21] is not None and batch["y"][22] is None  # batch ends at 21:00
    assert speed["y"][20] is None and None not in speed["y"][21:]  # speed joins it there
    shapes = page.evaluate("document.getElementById('trend-visitors').layout.shapes")
    assert len(shapes) == 1 and shapes[0]["x0"] == "2026-03-02 23:00"  # the open hour
    rate_axis = page.evaluate("document.getElementById('trend-bounce_rate').layout.yaxis")
    assert "%" in rate_axis["tickformat"]
    # Readable ticks: plotly.js chose them; none is a long decimal like 736.5 or 49.2%.
    ticks = page.locator("#trend-visitors .ytick text").all_text_contents()
    assert len(ticks) >= 3 and all(len(t) <= 6 for t in ticks), ticks
    # The latest scorecard and its lift chart, one row per metric.
    assert page.locator("table.scorecard tbody tr").count() == 7
    assert "always-valid" in page.inner_text("table.scorecard thead")
    lift = page.evaluate("document.getElementById('lift-chart').data[1].y")
    assert len(lift) == 7 and lift[0] == "orders"
    # Rolling visitors as of 23:30.
    rolling = page.inner_text("table.rolling")
    assert "460" in rolling and "463" in rolling and "5,060" in rolling
    assert len(_traces(page, "rolling-visitors_rolling_1h")) == 2
    _shot(page, "dashboard_experiment.png")
    # The qualified population is a link away.
    page.click("text=qualified")
    page.wait_for_url("**population=qualified**")
    page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1")
    assert "showing qualified" in page.inner_text("#facts")


def test_a_chart_updates_after_new_speed_points_land(page, tmp_path):
    settings = _settings(tmp_path)
    data.seed(settings)
    running = Running(settings)
    try:
        _open(page, f"{running.url}/experiment/{data.AB}")
        before = _traces(page, "trend-orders")[1]
        assert before["x"][-1] == "2026-03-02 23:00"
        # The speed layer's next micro-batch: the first minutes of 2026-03-03T00.
        new_hour = "2026-03-03T00:00:00Z"
        with MetricStore(settings.lake.metric_store) as store:
            store.upsert(
                Point(m, data.AB, v, pop, new_hour, "speed", 42.0)
                for m in charts.HOURLY_METRICS
                for v in ("control", "treatment")
                for pop in ("assigned", "qualified")
            )
            store.upsert(
                Point("visitors_rolling_1h", data.AB, "control", "assigned", stamp, "speed", 777)
                for stamp in ["2026-03-03T00:05:00Z"]
            )
        page.wait_for_function(
            """() => {
                const t = document.getElementById('trend-orders').data[1];
                return t.x[t.x.length - 1] === '2026-03-03 00:00';
            }""",
            timeout=60_000,  # a 1 s poll; the cores may be busy with other tests' Spark
        )
        after = _traces(page, "trend-orders")[1]
        assert after["y"][-1] == 42.0
        shapes = page.evaluate("document.getElementById('trend-orders').layout.shapes")
        assert shapes[0]["x0"] == "2026-03-03 00:00"  # the open hour moved on
        assert "777" in page.inner_text("table.rolling")
        _shot(page, "dashboard_updated.png")
    finally:
        running.stop()


def test_an_experiment_with_one_variant_has_a_clear_page(page, dashboard):
    response = _open(page, f"{dashboard.url}/experiment/{data.SOLO}")
    assert response.status == 200
    text = page.inner_text("main")
    assert "has one variant (control)" in text and "nothing to compare" in text
    assert "Traceback" not in page.content()
    assert [t["name"] for t in _traces(page, "trend-visitors")] == ["control", "control (speed)"]
    assert page.locator("#lift .chart").count() == 0
    _shot(page, "dashboard_one_variant.png")


def test_an_empty_store_has_a_clear_page(page, tmp_path):
    running = Running(_settings(tmp_path))
    try:
        response = _open(page, running.url + "/")
        assert response.status == 200
        text = page.inner_text("main")
        assert "The metric store holds no experiment points yet" in text
        assert "No data-quality points yet" in text
        assert "No hour that both layers have written yet" in text
        _shot(page, "dashboard_empty.png")
        response = page.goto(running.url + "/experiment/anything")
        assert response.status == 404
        assert "has no experiment named 'anything' (experiments: none yet)" in page.inner_text(
            "main"
        )
    finally:
        running.stop()


def test_an_unknown_experiment_has_a_clear_page(page, dashboard):
    response = page.goto(f"{dashboard.url}/experiment/no-such-test")
    assert response.status == 404
    assert page.inner_text("h1") == "Unknown experiment"
    text = page.inner_text("main")
    assert "The metric store has no experiment named 'no-such-test'" in text
    assert data.AB in text and data.SOLO in text
    assert "Traceback" not in page.content()
    _shot(page, "dashboard_unknown_experiment.png")
    # Markup in the URL is shown as text, never run.
    response = page.goto(f"{dashboard.url}/experiment/%3Cb%3Ebold%3C%2Fb%3E")
    assert response.status == 404 and page.locator("main b").count() == 0
    assert dashboard.get("/api/experiment/no-such-test")[0] == 404
    assert dashboard.get(f"/experiment/{data.AB}?population=everyone")[0] == 404
    assert dashboard.get("/nowhere")[0] == 404


def test_no_request_leaves_loopback(page, dashboard):
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    _open(page, dashboard.url + "/")
    page.click(f"text={data.AB}")
    page.wait_for_url(f"**/experiment/{data.AB}")
    page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1")
    page.wait_for_timeout(2_500)  # more polls, one a second
    urls = seen + REQUESTS  # this page's, and every earlier page's of this module
    hosts = {urlsplit(u).hostname for u in urls}
    assert hosts <= LOOPBACK_HOSTS, hosts
    assert sum("/static/plotly-" in u for u in seen) >= 1  # plotly.js from the package
    assert sum("/api/experiment/" in u for u in seen) >= 3  # the polls


def test_plotly_js_is_served_from_the_installed_package(dashboard):
    status, body = dashboard.get(f"/static/plotly-{charts.plotly_js_version()}.min.js")
    assert status == 200 and body == charts.plotly_js_path().read_bytes()
    assert dashboard.get("/static/plotly-0.0.0.min.js")[0] == 404
    assert dashboard.get("/healthz") == (200, b"ok\n")


def test_readers_never_block_the_writers(page, tmp_path):
    """A page polling every second and a writer upserting beside it: no write waits."""
    settings = _settings(tmp_path)
    data.seed(settings)
    running = Running(settings)
    try:
        _open(page, f"{running.url}/experiment/{data.AB}")
        slowest = 0.0
        with MetricStore(settings.lake.metric_store) as store:
            for i in range(12):
                started = time.monotonic()
                store.upsert(
                    [Point("visitors", data.AB, "control", "assigned", data.hour(23), "speed", i)]
                )
                slowest = max(slowest, time.monotonic() - started)
                running.json(f"/api/experiment/{data.AB}")  # a read between every write
        page.wait_for_function("Number(document.body.dataset.updates || 0) >= 2")
        assert slowest < 2.0, slowest
    finally:
        running.stop()


def test_the_json_endpoints_on_postgresql(tmp_path, postgres_url):
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS expo_dashboard"))
        conn.execute(sa.text("CREATE DATABASE expo_dashboard"))
    url = sa.make_url(postgres_url).set(database="expo_dashboard")
    url_text = url.render_as_string(hide_password=False)
    settings = _settings(tmp_path, EXPO_METRIC_STORE=url_text)
    data.seed(settings)
    running = Running(settings)
    try:
        overview = running.json("/api/overview")
        assert data.AB in overview["html"]["experiments"]
        assert overview["figures"]["drift"][0]["figure"]["data"][0]["x"][2] == "2026-03-02 20:00"
        doc = running.json(f"/api/experiment/{data.AB}?population=qualified&hours=24")
        trends = {f["id"]: f["figure"] for f in doc["figures"]["trends"]}
        visitors = trends["trend-visitors"]["data"]
        assert [t["line"]["dash"] for t in visitors] == ["solid", "dash", "solid", "dash"]
        assert len(visitors[0]["x"]) == 24  # the 24-hour window
        assert doc["html"]["scorecard"].startswith("<p class=empty>No scorecard yet")
        assert running.get("/api/experiment/nope")[0] == 404
        # Between requests the dashboard holds no transaction open (so no lock either).
        with admin.connect() as conn:
            open_transactions = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'expo_dashboard' "
                    "AND state LIKE 'idle in transaction%'"
                )
            ).scalar()
        assert open_transactions == 0
    finally:
        running.stop()
        admin.dispose()


def test_trend_figure_joins_the_speed_line_to_the_batch_line():
    points = [
        Point("orders", "e", "control", "assigned", data.hour(h), layer, float(h))
        for h, layer in ((0, "batch"), (1, "batch"), (2, "speed"), (3, "speed"))
    ]
    series = hourly_charts.hourly_series(points)["orders"]
    fig = hourly_charts.trend_figure("orders", series, {"control": "#000000"}, merged=True)
    batch, speed = fig.data
    assert list(batch.y) == [0.0, 1.0, None, None]
    assert list(speed.y) == [None, 1.0, 2.0, 3.0]
    assert (batch.line.dash, speed.line.dash) == ("solid", "dash")


def test_the_dashboard_listens_on_loopback_only():
    assert check_loopback("127.0.0.1") == "127.0.0.1"
    assert check_loopback("localhost") == "127.0.0.1"
    assert check_loopback("::1") == "::1"
    for host in ("0.0.0.0", "192.168.1.4", "example.org"):
        with pytest.raises(Exception, match="loopback only"):
            check_loopback(host)


def _expo(*args: str, env: dict) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    return subprocess.Popen(
        [sys.executable, "-m", "expo_platform.cli", *args],
        cwd=PROJECT,
        env=clean | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_expo_dashboard_serves_until_terminated(tmp_path):
    process = _expo(
        "dashboard", "--port", "0", env={"EXPO_HOME": str(tmp_path), "EXPO_LAKE": "lake"}
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(url + "healthz", timeout=10) as response:
            assert response.read() == b"ok\n"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"Expo experiments" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in process.stderr.read()


def test_expo_dashboard_refuses_a_non_loopback_host(tmp_path):
    process = _expo("dashboard", "--host", "0.0.0.0", env={"EXPO_LAKE": str(tmp_path)})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip().startswith("expo: error: the dashboard listens on loopback only")
    assert len(err.strip().splitlines()) == 1
