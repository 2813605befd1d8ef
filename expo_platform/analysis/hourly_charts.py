"""The charts over time of the dashboard and the trend reports: each metric per hour by
variant (batch solid, speed dashed), the rolling visitors, data quality per hour and the
speed-versus-batch drift. What every chart shares is in `expo_platform.analysis.charts`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import plotly.graph_objects as go

from expo_platform.analysis.charts import (
    CHARTED,
    LAYER_DASH,
    PALETTE,
    PERCENT_METRICS,
    QUALITY_COLORS,
    RATIOS,
    TITLES,
    WORSE,
    _layout,
    _no_data,
    ordered_variants,
    plot_time,
)
from expo_platform.serving.store import Point


def hourly_series(points: Iterable[Point]) -> dict[str, dict[tuple[str, str], list]]:
    """metric -> (variant, layer) -> sorted (time, value), ratios derived per hour and layer;
    time is a plotly.js UTC time (`plot_time`)."""
    raw: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for p in points:
        raw[(p.variant, p.layer, p.hour)][p.metric] = p.value
    out: dict[str, dict[tuple[str, str], list]] = defaultdict(lambda: defaultdict(list))
    for (variant, layer, hour), values in sorted(raw.items()):
        x = plot_time(hour)
        for metric in CHARTED:
            if metric in RATIOS:
                num, den = RATIOS[metric]
                if values.get(den):
                    out[metric][(variant, layer)].append((x, values.get(num, 0.0) / values[den]))
            elif metric in values:
                out[metric][(variant, layer)].append((x, values[metric]))
    return out


def _merged_traces(rows: list[tuple[str, float, str]]) -> dict[str, list]:
    """Split one variant's merged points (time, value, layer) into a solid batch line and a
    dashed speed line that meet where the layers hand over: the speed line also takes the
    batch points next to its own, so no gap opens between the two."""
    layers = [layer for _, _, layer in rows]
    batch = [y if layer == "batch" else None for (_, y, layer) in rows]
    speed = []
    for i, (_, y, layer) in enumerate(rows):
        beside = {layers[j] for j in (i - 1, i + 1) if 0 <= j < len(rows)}
        speed.append(y if layer == "speed" or "speed" in beside else None)
    return {"batch": batch, "speed": speed}


def trend_figure(
    metric: str,
    series: Mapping[tuple[str, str], Sequence[tuple[str, float]]],
    colors: Mapping[str, str],
    *,
    merged: bool = False,
    open_hour: str | None = None,
    height: int = 300,
) -> go.Figure:
    """One metric per hour by variant: batch solid, speed dashed.

    With `merged`, `series` is the merged view (each hour from one layer) and each variant is
    one line that turns dashed where the speed layer supplies the hours; otherwise both
    layers are drawn where both have points (the trend reports). `open_hour` (a plotly.js
    time) is shaded: the hour still running, read from the speed layer.
    """
    fig = go.Figure(layout=_layout(TITLES.get(metric, metric), height=height))
    if metric in PERCENT_METRICS:
        fig.update_yaxes(tickformat=".2~%", hoverformat=".2%")
    variants = ordered_variants(v for v, _ in series)
    for variant in variants:
        color = colors.get(variant, PALETTE[-1])
        if merged:
            rows = sorted(
                (x, y, layer) for (v, layer), pts in series.items() if v == variant for x, y in pts
            )
            xs = [x for x, _, _ in rows]
            lines = _merged_traces(rows)
        else:
            lines = {}
            xs = None
        shown = False
        for layer in ("batch", "speed"):
            if merged:
                x, y = xs, lines[layer]
            else:
                pts = series.get((variant, layer), ())
                x, y = [p[0] for p in pts], [p[1] for p in pts]
            if not any(v is not None for v in y):
                continue
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=variant if layer == "batch" else f"{variant} (speed)",
                    legendgroup=variant,
                    showlegend=not shown,
                    line={"color": color, "width": 2, "dash": LAYER_DASH[layer]},
                    marker={"size": 4, "color": color},
                    connectgaps=False,
                )
            )
            shown = True
    if open_hour:
        # A layout shape rather than add_vrect: the same rectangle, without its validation cost.
        fig.update_layout(
            shapes=[
                {
                    "type": "rect",
                    "xref": "x",
                    "yref": "paper",
                    "x0": open_hour,
                    "x1": _plus_one_hour(open_hour),
                    "y0": 0,
                    "y1": 1,
                    "fillcolor": "#fff1c1",
                    "opacity": 0.6,
                    "line": {"width": 0},
                    "layer": "below",
                }
            ],
            annotations=[
                {
                    "text": "open hour",
                    "xref": "x",
                    "yref": "paper",
                    "x": open_hour,
                    "y": 1,
                    "xanchor": "left",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"size": 10, "color": "#7a5b00"},
                }
            ],
        )
    if not fig.data:
        _no_data(fig)
    return fig


def _plus_one_hour(time: str) -> str:
    moment = datetime.strptime(time, "%Y-%m-%d %H:%M")
    return datetime.fromtimestamp(moment.replace(tzinfo=UTC).timestamp() + 3600, UTC).strftime(
        "%Y-%m-%d %H:%M"
    )


def rolling_figure(
    metric: str, points: Iterable[Point], colors: Mapping[str, str], height: int = 280
) -> go.Figure:
    """Rolling unique visitors by variant at the speed layer's minute stamps."""
    by_variant: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for p in points:
        if p.metric == metric:
            by_variant[p.variant].append((plot_time(p.hour), p.value))
    fig = go.Figure(layout=_layout(TITLES.get(metric, metric), height=height))
    fig.update_xaxes(hoverformat="%Y-%m-%d %H:%M UTC")
    for variant in ordered_variants(by_variant):
        pts = sorted(by_variant[variant])
        fig.add_trace(
            go.Scatter(
                x=[x for x, _ in pts],
                y=[y for _, y in pts],
                mode="lines",
                name=variant,
                line={"color": colors.get(variant, PALETTE[-1]), "width": 2, "dash": "dash"},
            )
        )
    if not fig.data:
        _no_data(fig, "no rolling visitors: the speed layer writes them")
    return fig


def quality_figure(points: Iterable[Point], height: int = 320) -> go.Figure:
    """Data quality per hour: rejected lines by reason, duplicates and late beacons, stacked."""
    by_metric: dict[str, dict[str, float]] = defaultdict(dict)
    seen = False
    for p in points:
        seen = True
        if p.metric in QUALITY_COLORS:
            by_metric[p.metric][plot_time(p.hour)] = p.value
    fig = go.Figure(
        layout=_layout(
            "rejected, duplicate and late beacons per hour", height=height, barmode="stack"
        )
    )
    for metric, color in QUALITY_COLORS.items():
        values = by_metric.get(metric)
        if not values:
            continue
        hours = sorted(values)
        fig.add_trace(
            go.Bar(
                x=hours,
                y=[values[h] for h in hours],
                name=metric.removeprefix("beacons_").replace("rejected_", "rejected: "),
                marker={"color": color},
            )
        )
    if not fig.data:
        _no_data(fig, "no rejected, duplicate or late beacons" if seen else "no data yet")
    _hourly_ticks(fig, len({h for values in by_metric.values() for h in values}))
    return fig


def drift_figure(reconciliations: Sequence, tolerance: float, height: int = 300) -> go.Figure:
    """Speed-versus-batch drift per finished hour, the worst metric of each hour, against the
    reconciliation check's tolerance (`EXPO_RECONCILE_TOLERANCE`)."""
    compared = [r for r in reconciliations if r.compared and r.drift]
    fig = go.Figure(
        layout=_layout(
            "speed-versus-batch drift per hour (worst metric)",
            height=height,
            percent=True,
            hovermode="closest",
            showlegend=False,
        )
    )
    if not compared:
        _no_data(fig, "no hour that both layers have finished")
        return fig
    worst = [max(r.drift, key=r.drift.get) for r in compared]
    values = [r.drift[m] for r, m in zip(compared, worst, strict=True)]
    fig.add_trace(
        go.Bar(
            x=[plot_time(r.hour) for r in compared],
            y=values,
            marker={"color": [WORSE if v > tolerance else "#2da44e" for v in values]},
            text=[f"{v:.1%}" for v in values],
            textposition="outside",
            cliponaxis=False,
            hovertext=[
                f"{plot_time(r.hour)} UTC<br>{m}: {v:.2%}"
                + (f" ({r.worst_keys.get(m)})" if r.worst_keys.get(m) else "")
                for r, m, v in zip(compared, worst, values, strict=True)
            ],
            hoverinfo="text",
            name="drift",
        )
    )
    fig.add_hline(
        y=tolerance,
        line={"color": "#444444", "dash": "dot", "width": 1.5},
        annotation_text=f"tolerance {tolerance * 100:g}%",
        annotation_position="top right",
    )
    fig.update_yaxes(rangemode="tozero", range=[0, max(max(values), tolerance) * 1.25 or 0.01])
    _hourly_ticks(fig, len(compared))
    return fig


def _hourly_ticks(fig: go.Figure, hours: int) -> None:
    """Bars of a few hours: one tick an hour (plotly.js would add half hours between)."""
    if hours <= 12:
        fig.update_xaxes(dtick=3_600_000)
