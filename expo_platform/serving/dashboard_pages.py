"""The dashboard's HTML pages: their style, the script that polls a page's JSON twin and
redraws it with `Plotly.react`, and the overview, experiment and problem pages.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from expo_platform.analysis import charts
from expo_platform.serving.dashboard_data import POPULATIONS, WINDOWS, Experiment
from expo_platform.serving.dashboard_documents import Dashboard

STYLE = """
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 10px 24px; display: flex; gap: 24px;
         align-items: baseline; flex-wrap: wrap; }
header a { color: #fff; text-decoration: none; font-weight: 600; font-size: 16px; }
header .store { color: #c9d1d9; font-size: 12px; }
header .status { margin-left: auto; font-size: 12px; color: #c9d1d9; }
header .status.error { color: #ffb3b3; font-weight: 600; }
main { padding: 16px 24px 48px; max-width: 1500px; }
h1 { font-size: 22px; margin: 8px 0 12px; } h2 { font-size: 17px; margin: 28px 0 8px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 16px;
          margin: 16px 0; }
section h2 { margin-top: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
        gap: 12px; }
.chart { min-height: 260px; border: 1px solid #eaeef2; border-radius: 6px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
td, th { border: 1px solid #d8dee4; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; text-align: left; } td.name { text-align: left; }
td.big { font-size: 20px; font-weight: 600; }
td.big .muted { font-size: 12px; font-weight: normal; }
.variant { white-space: nowrap; } table.scorecard td { white-space: nowrap; }
tr.sig td { background: #eef7ee; }
.note, .muted { color: #57606a; } .note { font-size: 13px; }
.empty { background: #fff8c5; border: 1px solid #d4a72c; padding: 10px 14px;
         border-radius: 6px; }
.bad { color: #cf222e; } .ok { color: #1a7f37; }
.badge { padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         white-space: nowrap; }
.badge.bad { background: #ffebe9; border: 1px solid #cf222e; }
.badge.ok { background: #dafbe1; border: 1px solid #1a7f37; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin: 0 4px 0 6px; }
.splitbar { display: flex; width: 220px; height: 8px; border-radius: 4px; overflow: hidden;
            margin: 3px 0; background: #eaeef2; }
.share { display: block; height: 8px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: #57606a; } dl.facts dd { margin: 0; }
nav.choices a, nav.choices b { margin-right: 10px; }
nav.choices { margin: 4px 0; font-size: 13px; }
.problem { max-width: 760px; }
.problem h1 { color: #cf222e; }
code { background: #eff1f3; padding: 1px 4px; border-radius: 4px; }
"""


SCRIPT = """
(function () {
  const body = document.body;
  const api = body.dataset.api;
  const every = Math.max(1, Number(body.dataset.refresh || 10)) * 1000;
  const status = document.getElementById("status");
  const config = JSON.parse(body.dataset.plotlyConfig);
  let version = null, busy = false;
  function say(text, error) {
    status.textContent = text;
    status.className = error ? "status error" : "status";
  }
  function place(container, figures) {
    const box = document.getElementById(container);
    if (!box) return;
    const keep = new Set(figures.map(f => f.id));
    for (const child of Array.from(box.children)) {
      if (!keep.has(child.id)) { Plotly.purge(child); child.remove(); }
    }
    for (const f of figures) {
      let div = document.getElementById(f.id);
      if (!div) {
        div = document.createElement("div");
        div.id = f.id;
        div.className = "chart";
        box.appendChild(div);
      }
      Plotly.react(div, f.figure.data, f.figure.layout, config);
    }
  }
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const response = await fetch(api, {cache: "no-store"});
      const doc = await response.json();
      if (!response.ok) { say(doc.error || response.statusText, true); return; }
      const newest = doc.newest ? " · newest point " + doc.newest : "";
      say("updated " + new Date().toLocaleTimeString() + newest, false);
      if (doc.version === version) return;
      for (const [id, text] of Object.entries(doc.html)) {
        const el = document.getElementById(id);
        if (el) el.innerHTML = text;
      }
      for (const [container, figures] of Object.entries(doc.figures)) place(container, figures);
      version = doc.version;
      body.dataset.version = version;
      body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
    } catch (error) {
      say("cannot reach the dashboard server: " + error, true);
    } finally {
      busy = false;
    }
  }
  refresh();
  setInterval(refresh, every);
})();
"""


def _page(
    title: str,
    content: str,
    *,
    store: str,
    api: str | None = None,
    refresh: int = 10,
) -> str:
    """A whole page: the header, the content and, for a live page, the poller."""
    live = ""
    if api is not None:
        live = (
            f'<script src="/static/plotly-{charts.plotly_js_version()}.min.js"></script>'
            f"<script>{SCRIPT}</script>"
        )
    data = (
        ""
        if api is None
        else (
            f' data-api="{html.escape(api)}" data-refresh="{refresh}"'
            f" data-plotly-config='{html.escape(json.dumps(charts.CONFIG))}'"
        )
    )
    status = "loading…" if api else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Expo</title><style>{STYLE}</style></head>
<body{data}>
<header><a href="/">Expo experiments</a><span class=store>metric store
{html.escape(store)}</span><span id=status class=status>{status}</span></header>
<main>{content}</main>
{live}
</body></html>
"""


def overview_page(dashboard: Dashboard) -> str:
    content = """
<h1>Experiments</h1>
<section><div id="experiments"><p class=muted>loading…</p></div></section>
<section><h2>Data quality per hour</h2><div id="quality-note"></div>
<div id="quality"></div><div id="quality-table"></div></section>
<section><h2>Speed layer versus batch layer</h2><div id="drift-note"></div>
<div id="drift"></div><div id="drift-table"></div></section>
"""
    return _page(
        "Experiments",
        content,
        store=dashboard.store_label,
        api="/api/overview",
        refresh=dashboard.settings.local.dashboard_refresh_seconds,
    )


def experiment_page(dashboard: Dashboard, exp: Experiment, population: str, hours: int) -> str:
    name = quote(exp.name, safe="")
    populations = " ".join(
        f"<b>{p}</b>" if p == population else f'<a href="?population={p}&hours={hours}">{p}</a>'
        for p in POPULATIONS
    )
    windows = " ".join(
        f"<b>{label}</b>"
        if h == hours
        else f'<a href="?population={population}&hours={h}">{label}</a>'
        for h, label in WINDOWS.items()
    )
    content = f"""
<h1>{html.escape(exp.name)}</h1>
<nav class=choices>population: {populations}</nav>
<nav class=choices>hourly window: {windows}</nav>
<div id="population-note"></div>
<section><div id="facts"></div></section>
<section><h2>Rolling visitors (live)</h2><div id="rolling-now"></div>
<div id="rolling" class="grid"></div></section>
<section><h2>Latest scorecard</h2><div id="lift"></div><div id="scorecard"></div></section>
<section><h2>Hourly metrics by variant</h2><div id="trends-note"></div>
<div id="trends" class="grid"></div></section>
"""
    return _page(
        exp.name,
        content,
        store=dashboard.store_label,
        api=f"/api/experiment/{name}?population={population}&hours={hours}",
        refresh=dashboard.settings.local.dashboard_refresh_seconds,
    )


def problem_page(dashboard: Dashboard, title: str, message: str, hint: str = "") -> str:
    content = (
        f"<div class=problem><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message[:1].upper() + message[1:])}</p>"
        f"{hint}<p><a href='/'>All experiments</a></p></div>"
    )
    return _page(title, content, store=dashboard.store_label)
