"""Trend reports: one self-contained HTML file per experiment, charts drawn as inline SVG.

The file needs nothing from the network: no scripts, no fonts, no style sheets from a CDN,
so it opens offline and can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from expo_platform.analysis.stats import RATIO_METRICS
from expo_platform.serving.store import Point

# Ratios are derived at read time (METRICS.md section 4), never stored: the scorecard's
# ratio metrics, and two more that the charts show.
RATIOS = {
    **RATIO_METRICS,
    "orders_per_visit": ("orders", "visits"),
    "mean_page_load_ms": ("page_load_ms_sum", "page_load_ms_count"),
}
CHARTED = ("visitors", "visits", "orders", "revenue", *RATIOS)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
LAYER_DASH = {"batch": "", "speed": "6 4"}
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 64, 16, 28, 36


@dataclass(frozen=True)
class Series:
    """One line of a chart: (x, y) points, x in epoch ms."""

    label: str
    color: str
    points: Sequence[tuple[float, float]]
    dash: str = ""
    band: Sequence[tuple[float, float, float]] = ()  # (x, low, high), drawn under the line


def hourly_series(points: Iterable[Point]) -> dict[str, dict[tuple[str, str], list]]:
    """metric -> (variant, layer) -> sorted (hour ms, value), ratios derived per hour."""
    raw: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for p in points:
        raw[(p.variant, p.layer, p.hour)][p.metric] = p.value
    out: dict[str, dict[tuple[str, str], list]] = defaultdict(lambda: defaultdict(list))
    for (variant, layer, hour), values in sorted(raw.items()):
        x = datetime.fromisoformat(hour.replace("Z", "+00:00")).timestamp() * 1000
        for metric in CHARTED:
            if metric in RATIOS:
                num, den = RATIOS[metric]
                if values.get(den):
                    out[metric][(variant, layer)].append((x, values.get(num, 0.0) / values[den]))
            elif metric in values:
                out[metric][(variant, layer)].append((x, values[metric]))
    return out


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _hour_label(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%m-%d %H:00")


def line_chart(title: str, series: Sequence[Series], percent: bool = False) -> str:
    """An SVG line chart with axes, a legend and optional shaded bands."""
    xs = [x for s in series for x, _ in s.points] + [x for s in series for x, _, _ in s.band]
    ys = [y for s in series for _, y in s.points]
    ys += [v for s in series for _, lo, hi in s.band for v in (lo, hi)]
    if not xs:
        return (
            f'<svg class="chart" width="{WIDTH}" height="40">'
            f'<text x="8" y="24">{html.escape(title)}: no data</text></svg>'
        )
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(max(ys), 0.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return PAD_T + (y1 - y) / (y1 - y0) * plot_h

    label = (lambda v: f"{v * 100:.1f}%") if percent else _fmt
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{PAD_L}" y="18" class="title">{html.escape(title)}</text>',
    ]
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(
            f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            'class="grid"/>'
            f'<text x="{PAD_L - 6}" y="{py(y) + 4:.1f}" class="tick" text-anchor="end">'
            f"{label(y)}</text>"
        )
    if y0 < 0 < y1:
        parts.append(
            f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{py(0):.1f}" y2="{py(0):.1f}" '
            'class="zero"/>'
        )
    for x, anchor in ((x0, "start"), ((x0 + x1) / 2, "middle"), (x1, "end")):
        parts.append(
            f'<text x="{px(x):.1f}" y="{HEIGHT - 18}" class="tick" text-anchor="{anchor}">'
            f"{_hour_label(x)}</text>"
        )
    for s in series:
        if s.band:
            upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in s.band)
            lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(s.band))
            parts.append(
                f'<polygon points="{upper} {lower}" fill="{s.color}" fill-opacity="0.15"/>'
            )
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>'
        )
        if len(s.points) == 1:
            ((x, y),) = s.points
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s.color}"/>')
    for i, s in enumerate(series):
        y = HEIGHT - 4
        x = PAD_L + i * 130
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{y - 4}" y2="{y - 4}" stroke="{s.color}" '
            f'stroke-width="2"{dash}/><text x="{x + 22}" y="{y}" class="legend">'
            f"{html.escape(s.label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _colors(variants: Iterable[str]) -> dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(sorted(variants))}


def _scorecard_table(card: dict) -> str:
    """The scorecard as an HTML table: one row per variant and metric."""
    head = (
        "<tr><th>variant</th><th>metric</th><th>control</th><th>variant</th><th>lift</th>"
        "<th>95% interval of the difference</th><th>p-value</th></tr>"
    )
    rows = []
    for c in card.get("comparisons", []):
        lift = "" if c.get("lift") is None else f"{c['lift'] * 100:+.2f}%"
        low, high = c.get("ci_low"), c.get("ci_high")
        interval = "" if low is None else f"[{_fmt(low)}, {_fmt(high)}]"
        p = c.get("p_value")
        significant = p is not None and p < 0.05
        rows.append(
            f"<tr{' class=sig' if significant else ''}><td>{html.escape(c['variant'])}</td>"
            f"<td>{html.escape(c['metric'])}</td><td>{_fmt(c['control_value'] or 0)}</td>"
            f"<td>{_fmt(c['variant_value'] or 0)}</td><td>{lift}</td><td>{interval}</td>"
            f"<td>{'' if p is None else f'{p:.4g}'}</td></tr>"
        )
    srm = card.get("srm", {})
    note = (
        f"<p>Sample-ratio mismatch p-value {srm.get('p_value', float('nan')):.4g}"
        f"{' <b>(flagged: p &lt; 0.001)</b>' if srm.get('flagged') else ''}; "
        f"visitors seen in several variants, excluded: {card.get('visitors_multi_variant', 0)}."
        "</p>"
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"


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
    return "\n".join(lines)


def render_trend_report(
    experiment: str,
    population: str,
    points: Iterable[Point],
    lift_paths: dict[str, list[dict]],
    lift_metric: str,
    scorecard: dict | None = None,
    generated: datetime | None = None,
) -> str:
    """The HTML trend report of one experiment and population.

    `points` are the experiment's stored hourly points of both layers; `lift_paths` maps a
    variant to its cumulative lift over time against control: dicts with `time_ms`, `lift`,
    `low` and `high` (the always-valid interval of the relative lift).
    """
    by_metric = hourly_series(p for p in points if p.population == population)
    variants = {v for series in by_metric.values() for v, _ in series}
    colors = _colors(variants | set(lift_paths))
    charts = []
    for metric in CHARTED:
        series = [
            Series(f"{variant} ({layer})", colors[variant], pts, LAYER_DASH[layer])
            for (variant, layer), pts in sorted(by_metric.get(metric, {}).items())
        ]
        percent = metric in ("bounce_rate", "error_rate")
        charts.append(line_chart(f"{metric} per hour", series, percent=percent))
    lift_series = [
        Series(
            f"{variant} vs control",
            colors[variant],
            [(p["time_ms"], p["lift"]) for p in path if _finite(p["lift"])],
            band=[
                (p["time_ms"], p["low"], p["high"])
                for p in path
                if _finite(p["low"]) and _finite(p["high"])
            ],
        )
        for variant, path in sorted(lift_paths.items())
    ]
    lift_chart = line_chart(
        f"cumulative lift of {lift_metric} per visitor, always-valid 95% interval",
        lift_series,
        percent=True,
    )
    stamp = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{experiment}: {population} population"
    card = _scorecard_table(scorecard) if scorecard else "<p>No scorecard yet.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
.grid {{ stroke: #e5e5e5; }} .zero {{ stroke: #888; }}
.tick, .legend {{ font-size: 11px; fill: #555; }} .title {{ font-size: 13px; font-weight: 600; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 12px; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
tr.sig td {{ background: #eef7ee; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Hourly metrics by variant: solid lines are the batch layer, dashed lines the speed
layer. Generated {stamp}.</p>
<h2>Cumulative lift</h2>
<div class="charts" id="lift">{lift_chart}</div>
<h2>Scorecard</h2>
{card}
<h2>Hourly metrics</h2>
<div class="charts" id="hourly">{"".join(charts)}</div>
</body></html>
"""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
