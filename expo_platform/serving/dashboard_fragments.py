"""The HTML pieces of the dashboard's documents: variants and their split, the sample-ratio
badge, an experiment's facts, the rolling visitors, the notes under the trends, and the data
quality and drift tables.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable

from expo_platform.analysis import charts
from expo_platform.serving.dashboard_data import (
    STALE_ROLLING,
    WINDOWS,
    Experiment,
    Split,
    _moment,
    _shown,
)
from expo_platform.serving.store import Point


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _swatch(color: str) -> str:
    return f'<span class=swatch style="background:{color}"></span>'


def _variant_list(variants: Iterable[str], colors: dict) -> str:
    return " ".join(
        f"<span class=variant>{_swatch(colors[v])}{html.escape(v)}</span>" for v in variants
    )


def _split_text(split: Split | None, colors: dict) -> str:
    if split is None:
        return "<span class=muted>no visitor counts yet</span>"
    shares = split.shares()
    bar = "".join(
        f'<span class=share style="width:{share * 100:.2f}%;background:'
        f'{colors.get(v, charts.PALETTE[-1])}" title="{html.escape(v)} {share:.1%}"></span>'
        for v, share in shares.items()
    )
    text = " · ".join(f"{html.escape(v)} {share:.1%}" for v, share in shares.items())
    return (
        f"<div class=splitbar>{bar}</div>{text}"
        f"<br><span class=muted>{html.escape(split.source)}</span>"
    )


def _srm_badge(split: Split | None, variants: int) -> str:
    if variants < 2:
        return "<span class=muted>one variant</span>"
    if split is None or split.p_value is None:
        note = f" ({html.escape(split.note)})" if split and split.note else ""
        return f"<span class=muted>not tested yet{note}</span>"
    if split.flagged:
        return f"<span class='badge bad'>SRM: p = {split.p_value:.2g}</span>"
    return f"<span class='badge ok'>ok (p = {split.p_value:.2g})</span>"


def _facts(exp: Experiment, split: Split | None, colors: dict, population: str) -> str:
    return (
        "<dl class=facts>"
        f"<dt>variants</dt><dd>{_variant_list(exp.variants, colors)}"
        f" <span class=muted>(control: {html.escape(exp.control)})</span></dd>"
        f"<dt>traffic split</dt><dd>{_split_text(split, colors)}</dd>"
        f"<dt>sample ratio</dt><dd>{_srm_badge(split, len(exp.variants))}</dd>"
        f"<dt>running</dt><dd>{exp.days_running:.1f} days, {_shown(exp.first_hour)} to "
        f"{_shown(exp.last_hour)}</dd>"
        f"<dt>populations</dt><dd>{', '.join(exp.populations)} "
        f"<span class=muted>(showing {html.escape(population)})</span></dd>"
        "</dl>"
    )


def _rolling_table(exp: Experiment, rolling: dict, population: str, colors: dict) -> str:
    latest = {
        (metric, variant): p
        for (metric, _, variant, pop), p in rolling.items()
        if pop == population
    }
    if not latest:
        return (
            "<p class=empty>No rolling visitors: the speed layer (<code>expo stream</code>) "
            "writes them every micro-batch.</p>"
        )
    newest = max(p.hour for p in latest.values())
    rows = []
    for variant in exp.variants:
        cells = []
        for metric in charts.ROLLING_METRICS:
            p = latest.get((metric, variant))
            stale = p is not None and _moment(newest) - _moment(p.hour) > STALE_ROLLING
            cells.append(
                "<td class=big>–</td>"
                if p is None
                else f"<td class=big title='at {_shown(p.hour)}'>{_count(p.value)}"
                + (f" <span class=muted>(at {_shown(p.hour)})</span>" if stale else "")
                + "</td>"
            )
        rows.append(
            f"<tr><td class=name>{_swatch(colors[variant])}{html.escape(variant)}</td>"
            f"{''.join(cells)}</tr>"
        )
    return (
        "<table class=rolling><thead><tr><th>variant</th><th>visitors, last hour</th>"
        "<th>visitors, last 24 hours</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<p class=note>As of {_shown(newest)} (event time of the speed layer's newest "
        "micro-batch): the last hour counted exactly, the last 24 hours estimated from "
        "sketches.</p>"
    )


def _open_hour(points: list[Point]) -> str | None:
    """The newest hour, when only the speed layer has it: the hour still running."""
    if not points:
        return None
    newest = max(p.hour for p in points)
    layers = {p.layer for p in points if p.hour == newest}
    return charts.plot_time(newest) if layers == {"speed"} else None


def _trends_note(points: list[Point], open_hour: str | None, hours: int) -> str:
    if not points:
        return "<p class=empty>No hourly points in this window.</p>"
    hours_by_layer = defaultdict(set)
    for p in points:
        hours_by_layer[p.layer].add(p.hour)
    batch = sorted(hours_by_layer["batch"])
    speed = sorted(hours_by_layer["speed"])
    window = WINDOWS.get(hours, f"{hours} h")
    parts = []
    parts.append(
        f"batch layer (solid) {_shown(batch[0])} to {_shown(batch[-1])}"
        if batch
        else "no batch hours yet"
    )
    parts.append(
        f"speed layer (dashed) where batch has no point yet, {len(speed)} hour(s)"
        + (f", up to {_shown(speed[-1])}" if speed else "")
    )
    if open_hour:
        parts.append(f"the open hour {open_hour} UTC (shaded) is still running")
    return (
        f"<p class=note>Window: {window} up to the newest hour, from the merged view. "
        + "; ".join(parts)
        + ".</p>"
    )


def _quality_table(points: list[Point], rows_shown: int = 12) -> str:
    by_hour: dict[str, dict[str, float]] = defaultdict(dict)
    layers: dict[str, set] = defaultdict(set)
    for p in points:
        by_hour[p.hour][p.metric] = p.value
        layers[p.hour].add(p.layer)
    if not by_hour:
        return ""
    rows = []
    for hour in sorted(by_hour, reverse=True)[:rows_shown]:
        v = by_hour[hour]
        total = v.get("beacons_total", 0.0)
        rejected = sum(n for m, n in v.items() if m.startswith("beacons_rejected_"))
        rate = f"{rejected / total:.2%}" if total else "–"
        rows.append(
            f"<tr><td class=name>{_shown(hour)}</td><td>{_count(total)}</td>"
            f"<td>{_count(v.get('beacons_valid', 0.0))}</td><td>{_count(rejected)}</td>"
            f"<td>{rate}</td><td>{_count(v.get('beacons_duplicate', 0.0))}</td>"
            f"<td>{_count(v.get('beacons_late', 0.0)) if 'beacons_late' in v else '–'}</td>"
            f"<td class=name>{' + '.join(sorted(layers[hour]))}</td></tr>"
        )
    return (
        "<table class=quality><thead><tr><th>hour</th><th>lines</th><th>valid</th>"
        "<th>rejected</th><th>reject rate</th><th>duplicates</th><th>late</th><th>layer</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _drift_table(reconciliations: list) -> str:
    compared = [r for r in reconciliations if r.compared and r.drift]
    if not compared:
        return ""
    failing = [r for r in compared if not r.passed]
    if not failing:
        return (
            f"<p class=ok>All {len(compared)} hour(s) that both layers have written are within "
            "the tolerance.</p>"
        )
    rows = "".join(
        f"<tr><td class=name>{_shown(r.hour)}</td><td class=name>"
        + ", ".join(
            f"{html.escape(m)} {r.drift[m]:.2%}"
            + (f" ({html.escape(r.worst_keys[m])})" if r.worst_keys.get(m) else "")
            for m in r.failing()
        )
        + "</td></tr>"
        for r in reversed(failing)
    )
    return (
        f"<p class=bad>{len(failing)} of {len(compared)} hour(s) drift beyond the tolerance:"
        "</p><table class=drift><thead><tr><th>hour</th><th>metrics over the tolerance "
        f"(the key furthest apart)</th></tr></thead><tbody>{rows}</tbody></table>"
    )
