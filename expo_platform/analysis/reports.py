"""Trend reports and scorecard tables: one self-contained HTML file per experiment.

The charts are the dashboard's (`expo_platform.analysis.charts`, `hourly_charts` and
`lift_charts`, Plotly). A report embeds plotly.js inline, from the installed `plotly`
package, and its figures' data: it needs nothing from the network (no CDN, no fonts), so it
opens offline and can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from expo_platform.analysis import charts, hourly_charts, lift_charts
from expo_platform.serving.store import Point


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:+.4g}, {high:+.4g}]"


def scorecard_html(card: dict) -> str:
    """The scorecard as an HTML table, one row per variant and metric: the difference, its
    95% interval and p-value (fixed horizon), the always-valid interval for whoever peeks,
    Holm's adjusted p-value and the chance to beat control; then the sample-ratio test."""
    head = (
        "<thead><tr><th>variant</th><th>metric</th><th>control</th><th>variant</th>"
        "<th>difference</th><th>lift</th><th>95% interval</th><th>p-value</th>"
        "<th>p (Holm)</th><th>always-valid 95% interval</th><th>P(beat control)</th>"
        "</tr></thead>"
    )
    rows = []
    for c in card.get("comparisons", []):
        lift = "" if c.get("lift") is None else f"{c['lift'] * 100:+.2f}%"
        p = c.get("p_value")
        significant = p is not None and p < 0.05
        beat = c.get("chance_to_beat_control")
        diff = c.get("difference")
        holm = c.get("p_value_holm")
        rows.append(
            f"<tr{' class=sig' if significant else ''}>"
            f"<td class=name>{html.escape(c['variant'])}</td>"
            f"<td class=name>{html.escape(c['metric'])}</td>"
            f"<td>{'' if c.get('control_value') is None else _fmt(c['control_value'])}</td>"
            f"<td>{'' if c.get('variant_value') is None else _fmt(c['variant_value'])}</td>"
            f"<td>{'' if diff is None else f'{diff:+.4g}'}</td><td>{lift}</td>"
            f"<td>{_interval(c.get('ci_low'), c.get('ci_high'))}</td>"
            f"<td>{'' if p is None else f'{p:.3g}'}</td>"
            f"<td>{'' if holm is None else f'{holm:.3g}'}</td>"
            f"<td>{_interval(c.get('seq_ci_low'), c.get('seq_ci_high'))}</td>"
            f"<td>{'' if beat is None else f'{beat:.1%}'}</td></tr>"
        )
    srm = card.get("srm", {})
    srm_p = srm.get("p_value")
    srm_text = (
        "Sample-ratio test: not applicable (one variant)."
        if srm_p is None
        else f"Sample-ratio mismatch p-value {srm_p:.4g}"
        + (" <b class=bad>(flagged: p &lt; 0.001)</b>." if srm.get("flagged") else ".")
    )
    visitors = ", ".join(
        f"{html.escape(v)} {d['visitors']:,}" for v, d in card.get("variants", {}).items()
    )
    note = (
        f"<p class=note>Visitors: {visitors}; seen in several variants, excluded: "
        f"{card.get('visitors_multi_variant', 0):,}. {srm_text} Highlighted rows: p &lt; 0.05 "
        "at a fixed horizon; whoever looks before the planned end reads the always-valid "
        "interval.</p>"
    )
    return f"<table class=scorecard>{head}<tbody>{''.join(rows)}</tbody></table>{note}"


def scorecard_text(card: dict) -> str:
    """The scorecard as a plain-text table for the terminal."""
    columns = ("variant", "metric", "control", "value", "diff", "lift", "95% CI", "p", "")
    rows = []
    for c in card["comparisons"]:
        p = c["p_value"]
        low, high = c["ci_low"], c["ci_high"]
        rows.append(
            (
                c["variant"],
                c["metric"],
                "" if c["control_value"] is None else _fmt(c["control_value"]),
                "" if c["variant_value"] is None else _fmt(c["variant_value"]),
                "" if c["difference"] is None else f"{c['difference']:+.4g}",
                "" if c["lift"] is None else f"{c['lift'] * 100:+.2f}%",
                "" if low is None else f"[{low:+.4g}, {high:+.4g}]",
                "" if p is None else f"{p:.3g}",
                "*" if p is not None and p < 0.05 else "",
            )
        )
    lines = [
        f"{card['experiment']} ({card['population']}), {card['from']} .. {card['to']}, "
        f"control {card['control']}",
        "visitors: "
        + ", ".join(f"{v} {d['visitors']:,}" for v, d in card["variants"].items())
        + f"; in several variants (excluded): {card['visitors_multi_variant']:,}",
    ]
    srm = card["srm"]
    if srm["p_value"] is not None:
        flag = "  SAMPLE-RATIO MISMATCH (p < 0.001)" if srm["flagged"] else ""
        lines.append(f"sample-ratio test: chi2 {srm['chi2']:.3g}, p {srm['p_value']:.3g}{flag}")
    lines += _table(columns, rows)
    lines.append("* p < 0.05 (fixed horizon; for peeking, use the always-valid interval in JSON)")
    return "\n".join(lines) + "\n" + scorecard_extras_text(card)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows, strict=True)]
    return [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *rows)
    ]


EXTRA_COLUMNS = ("variant", "metric", "p", "p holm", "p BH", "P(beat)", "risk", "risk ctrl")


def _num(value: float | None, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _capping_line(card: dict) -> str:
    """How the scorecard capped orders, units and revenue, in one line."""
    capping = card.get("capping") or {}
    if capping.get("percentile") is None:
        return "capping: off (EXPO_CAP_PERCENTILE)"
    caps = ", ".join(
        f"{m} <= {cap:.4g} ({capping['visitors_capped'].get(m, 0):,} visitors above)"
        for m, cap in capping["caps"].items()
    )
    return f"capping at percentile {capping['percentile']:g} of all visitors: {caps}"


def scorecard_extras_text(card: dict) -> str:
    """The adjusted p-values and the Bayesian read-out, a second table under the scorecard."""
    rows = [
        (
            c["variant"],
            c["metric"],
            _num(c["p_value"]),
            _num(c.get("p_value_holm")),
            _num(c.get("p_value_bh")),
            _num(c.get("chance_to_beat_control"), ".1%"),
            _num(c.get("expected_loss"), ".3g"),
            _num(c.get("expected_loss_control"), ".3g"),
        )
        for c in card["comparisons"]
    ]
    lines = ["", _capping_line(card), "corrections and Bayesian read-out:"]
    lines += _table(EXTRA_COLUMNS, rows)
    family = sum(c["p_value"] is not None for c in card["comparisons"])
    lines += [
        f"p holm, p BH: Holm and Benjamini-Hochberg adjusted over the {family} p-values",
        "P(beat): chance the variant is better than control (lower is better for bounce_rate "
        "and error_rate)",
        "risk, risk ctrl: expected loss of shipping the variant, of keeping control (metric units)",
    ]
    return "\n".join(lines + cuped_text(card))


CUPED_COLUMNS = ("variant", "metric", "diff", "95% CI", "CUPED diff", "CUPED 95% CI", "CUPED p")
CUPED_COLUMNS += ("var. red.", "theta")


def cuped_text(card: dict) -> list[str]:
    """The CUPED-adjusted comparisons beside the plain ones, a third table."""
    block = card.get("cuped") or {}
    if not block.get("days"):
        return ["", "CUPED: off (EXPO_CUPED_DAYS=0)"]
    rows = [
        (
            c["variant"],
            c["metric"],
            _num(c["difference"], "+.4g"),
            _interval(c["ci_low"], c["ci_high"]),
            _num(c.get("cuped_difference"), "+.4g"),
            _interval(c.get("cuped_ci_low"), c.get("cuped_ci_high")),
            _num(c.get("cuped_p_value")),
            _num(c.get("cuped_variance_reduction"), ".1%"),
            _num(c.get("cuped_theta"), ".3g"),
        )
        for c in card["comparisons"]
    ]
    visitors = ", ".join(f"{v} {n:,}" for v, n in block["visitors_with_pre_period"].items())
    return [
        "",
        f"CUPED, covariate: the same metric over the {block['days']} days before each "
        f"visitor's first exposure (visitors with traffic then: {visitors}):",
        *_table(CUPED_COLUMNS, rows),
        "var. red.: 1 - Var(adjusted difference) / Var(difference); theta pooled over both arms",
    ]


REPORT_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
figure.chart { margin: 0; border: 1px solid #e5e5e5; border-radius: 6px; padding: 4px; }
figure.wide { max-width: 1100px; }
table { border-collapse: collapse; margin: 12px 0; font-variant-numeric: tabular-nums; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td.name, th { text-align: left; } th { background: #f6f8fa; } td { white-space: nowrap; }
tr.sig td { background: #eef7ee; } .bad { color: #cf222e; } .note { color: #57606a; }
"""


def _figure(fig, div_id: str, wide: bool = False) -> str:
    cls = "chart wide" if wide else "chart"
    plot = charts.figure_html(fig, f"{div_id}-plot")
    return f'<figure class="{cls}" id="{div_id}">{plot}</figure>'


def render_trend_report(
    experiment: str,
    population: str,
    points: Iterable[Point],
    lift_paths: dict[str, list[dict]],
    lift_metric: str,
    scorecard: dict | None = None,
    generated: datetime | None = None,
) -> str:
    """The HTML trend report of one experiment and population, charted like the dashboard.

    `points` are the experiment's stored hourly points of both layers; `lift_paths` maps a
    variant to its cumulative lift over time against control: dicts with `time_ms`, `lift`,
    `low` and `high` (the always-valid interval of the relative lift).
    """
    by_metric = hourly_charts.hourly_series(p for p in points if p.population == population)
    variants = {v for series in by_metric.values() for v, _ in series}
    colors = charts.variant_colors(variants | set(lift_paths))
    hourly = [
        _figure(
            hourly_charts.trend_figure(metric, by_metric.get(metric, {}), colors), f"trend-{metric}"
        )
        for metric in charts.CHARTED
    ]
    lift = _figure(lift_charts.lift_path_figure(lift_paths, lift_metric, colors), "lift-path", True)
    if scorecard:
        card = _figure(lift_charts.lift_figure(scorecard, colors), "lift-scorecard", True)
        card += scorecard_html(scorecard)
    else:
        card = "<p>No scorecard yet.</p>"
    stamp = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{experiment}: {population} population"
    plotly_js = charts.inline_plotly_js()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{REPORT_STYLE}</style>
<script>{plotly_js}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p>Hourly metrics by variant: solid lines are the batch layer, dashed lines the speed
layer (times in UTC). Generated {stamp}.</p>
<h2>Cumulative lift</h2>
<div id="lift">{lift}</div>
<h2>Scorecard</h2>
<div id="scorecard">{card}</div>
<h2>Hourly metrics</h2>
<div class="charts" id="hourly">{"".join(hourly)}</div>
</body></html>
"""
