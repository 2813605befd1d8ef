"""Trend reports (Plotly, the dashboard's charts) render offline in a real browser;
reconciliation drift on a real store."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import sync_playwright

from expo_platform.analysis import charts
from expo_platform.analysis.hourly_charts import hourly_series
from expo_platform.analysis.reports import render_trend_report
from expo_platform.serving.reconcile import reconcile_hour, reconcile_hours, relative_drift
from expo_platform.serving.store import MetricStore, Point
from tests.dashboard_data import scorecard_card
from tests.helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

HOURS = [f"2026-03-02T{h:02d}:00:00Z" for h in range(6)]


def _points() -> list[Point]:
    points = []
    for i, hour in enumerate(HOURS):
        for variant, scale in (("control", 1.0), ("treatment", 1.2)):
            values = {
                "visitors": 100 + 10 * i,
                "visits": 120 + 10 * i,
                "bounces": 40,
                "orders": (10 + i) * scale,
                "revenue": 300 * scale,
                "page_views": 400,
                "errors": 4,
                "page_load_ms_sum": 90_000,
                "page_load_ms_count": 100,
            }
            for layer in ("batch", "speed") if i >= 4 else ("batch",):
                points += [
                    Point(m, "exp", variant, "assigned", hour, layer, v) for m, v in values.items()
                ]
    return points


LIFT = {
    "treatment": [
        {
            "time_ms": 1772409600000 + h * 3_600_000,
            "lift": 0.2,
            "low": 0.2 - 1 / (h + 1),
            "high": 0.2 + 1 / (h + 1),
        }
        for h in range(6)
    ]
}


def test_ratios_are_derived_per_hour_and_layer():
    series = hourly_series(_points())
    (first_x, bounce_rate), *_ = series["bounce_rate"][("control", "batch")]
    assert first_x == "2026-03-02 00:00"  # a UTC time as plotly.js reads it
    assert bounce_rate == pytest.approx(40 / 120)
    assert series["mean_page_load_ms"][("treatment", "batch")][0][1] == 900.0
    assert len(series["orders"][("treatment", "speed")]) == 2  # only hours 4 and 5
    assert series["orders"][("treatment", "batch")][5][1] == pytest.approx(18.0)


CHARTS = 1 + len(charts.CHARTED)  # the cumulative lift, then every hourly metric


def _markup(page: str) -> str:
    """The page without the text of its scripts (plotly.js and the figures' data)."""
    return re.sub(r"<script[^>]*>.*?</script>", "<script></script>", page, flags=re.DOTALL)


def test_report_is_self_contained():
    page = render_trend_report("exp", "assigned", _points(), LIFT, "orders")
    markup = _markup(page)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", markup)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)
    assert charts.inline_plotly_js() in page  # plotly.js inline, from the installed package
    assert page.count('<figure class="chart') == CHARTS
    assert '"dash":"dash"' in page.replace(" ", "")  # the speed layer is drawn dashed
    assert "treatment vs control" in page


def test_report_renders_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make system`")
    path = tmp_path / "report.html"
    card = scorecard_card("exp")
    path.write_text(render_trend_report("exp", "assigned", _points(), LIFT, "orders", card))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "trend_report.png"
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot').length === {CHARTS + 1}"
            )
            lift_line = page.locator("#lift-path-plot .scatterlayer .trace").last.bounding_box()
            band = page.locator("#lift-path-plot .scatterlayer .trace path.js-fill").bounding_box()
            ticks = page.locator("#lift-path-plot .ytick text").all_text_contents()
            forest = page.evaluate("document.getElementById('lift-scorecard-plot').data[1].y")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert requests == [path.as_uri()]  # the page alone: nothing else, from anywhere
    assert lift_line["width"] > 300  # the lift line spans the chart
    assert band["height"] > 50  # the always-valid band is drawn around it
    assert all(t.endswith("%") for t in ticks) and "+50%" in ticks  # a percent axis
    assert forest[0] == "orders" and len(forest) == 7  # the scorecard's lift chart
    assert shot.stat().st_size > 20_000


def test_relative_drift_by_hand():
    batch = {("e", "A", "assigned"): 100.0, ("e", "B", "assigned"): 50.0}
    speed = {("e", "A", "assigned"): 90.0, ("e", "C", "assigned"): 3.0}
    drift, worst = relative_drift(speed, batch)
    assert drift == pytest.approx((10 + 50 + 3) / 150)
    assert worst == "e/B/assigned"
    assert relative_drift({}, {}) == (0.0, "")
    assert relative_drift({("e", "A", "assigned"): 1.0}, {})[0] == 1.0


def test_reconcile_hour_on_a_store(tmp_path):
    hour = HOURS[4]
    with MetricStore(f"sqlite:///{tmp_path / 'm.sqlite'}") as store:
        store.upsert(p for p in _points() if p.hour in (HOURS[3], hour))
        store.upsert([Point("orders", "exp", "control", "assigned", hour, "speed", 7.0)])
        result = reconcile_hour(store, hour, tolerance=0.02)
        quiet = reconcile_hour(store, HOURS[3], tolerance=0.02)
    # batch orders 14 (control) + 16.8 (treatment); speed control 7 instead of 14
    assert result.drift["orders"] == pytest.approx(7 / 30.8, abs=1e-6)
    assert result.drift["visits"] == 0.0
    assert result.failing() == ["orders"] and not result.passed
    assert not quiet.compared and quiet.passed  # no speed points that hour


def test_reconcile_hours_equals_reconcile_hour_by_hour(tmp_path):
    with MetricStore(f"sqlite:///{tmp_path / 'm.sqlite'}") as store:
        store.upsert(_points())
        store.upsert([Point("orders", "exp", "control", "assigned", HOURS[5], "speed", 1.0)])
        ranged = reconcile_hours(store, HOURS[0], HOURS[-1], tolerance=0.02)
        each = [reconcile_hour(store, h, tolerance=0.02) for h in HOURS]
    assert ranged == each
    assert [r.compared for r in ranged] == [False] * 4 + [True] * 2
    assert ranged[5].failing() == ["orders"]
