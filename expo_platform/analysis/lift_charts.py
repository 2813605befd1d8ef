"""The charts of lifts against control: a trend report's cumulative lift over time with its
always-valid interval, and the scorecard at a glance (the dashboard's and the reports'). What
every chart shares is in `expo_platform.analysis.charts`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from expo_platform.analysis.charts import (
    BETTER,
    LOWER_IS_BETTER,
    PALETTE,
    UNSURE,
    WORSE,
    _layout,
    _no_data,
    ms_time,
    ordered_variants,
)


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def lift_path_figure(
    lift_paths: Mapping[str, Sequence[Mapping]],
    metric: str,
    colors: Mapping[str, str],
    height: int = 400,
) -> go.Figure:
    """The cumulative lift of `metric` per visitor over time, each variant against control,
    with its always-valid 95% interval as a band: what an experimenter may read at any time
    without inflating false positives. `lift_paths` maps a variant to dicts with `time_ms`,
    `lift`, `low` and `high` (relative to control)."""
    fig = go.Figure(
        layout=_layout(
            f"cumulative lift of {metric} per visitor vs control, always-valid 95% interval",
            height=height,
        )
    )
    fig.update_yaxes(
        tickformat="+.1~%",
        hoverformat="+.2%",
        rangemode="normal",
        zeroline=True,
        zerolinecolor="#444444",
        zerolinewidth=1.5,
    )
    for variant in ordered_variants(lift_paths):
        color = colors.get(variant, PALETTE[-1])
        path = lift_paths[variant]
        band = [p for p in path if _finite(p["low"]) and _finite(p["high"])]
        if band:
            fig.add_trace(
                go.Scatter(
                    x=[ms_time(p["time_ms"]) for p in band],
                    y=[p["high"] for p in band],
                    mode="lines",
                    line={"width": 0, "color": color},
                    name=f"{variant}: interval high",
                    legendgroup=variant,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=[ms_time(p["time_ms"]) for p in band],
                    y=[p["low"] for p in band],
                    mode="lines",
                    line={"width": 0, "color": color},
                    fill="tonexty",
                    fillcolor=_rgba(color, 0.18),
                    name=f"{variant}: always-valid 95% interval",
                    legendgroup=variant,
                    hoverinfo="skip",
                )
            )
        line = [p for p in path if _finite(p["lift"])]
        fig.add_trace(
            go.Scatter(
                x=[ms_time(p["time_ms"]) for p in line],
                y=[p["lift"] for p in line],
                mode="lines+markers",
                marker={"size": 5},
                line={"color": color, "width": 2.5},
                name=f"{variant} vs control",
                legendgroup=variant,
            )
        )
    if not any(len(t.x or ()) for t in fig.data):
        _no_data(fig, "not enough visitors yet for a lift")
    return fig


def _relative(value: float | None, base: float | None) -> float | None:
    if not _finite(value) or not _finite(base) or base == 0:
        return None
    return value / abs(base)


def lift_figure(card: Mapping, colors: Mapping[str, str] | None = None) -> go.Figure:
    """The scorecard at a glance: every metric's lift of every variant against control, its
    95% interval (whiskers) and its always-valid interval (the wide pale bar), relative to
    the control's value. Green: better with the 95% interval clear of zero (lower is better
    for bounce and error rates), red: worse, grey: not distinguishable from zero."""
    rows = []
    several = len({c["variant"] for c in card.get("comparisons", [])}) > 1
    for c in card.get("comparisons", []):
        lift = _relative(c.get("difference"), c.get("control_value"))
        if lift is None:
            continue
        low = _relative(c.get("ci_low"), c.get("control_value"))
        high = _relative(c.get("ci_high"), c.get("control_value"))
        seq_low = _relative(c.get("seq_ci_low"), c.get("control_value"))
        seq_high = _relative(c.get("seq_ci_high"), c.get("control_value"))
        sign = -1 if c["metric"] in LOWER_IS_BETTER else 1
        clear = low is not None and high is not None and (low > 0 or high < 0)
        color = UNSURE if not clear else (BETTER if sign * lift > 0 else WORSE)
        label = c["metric"] + (" (lower is better)" if c["metric"] in LOWER_IS_BETTER else "")
        if several:
            label = f"{c['variant']}: {label}"
        p = c.get("p_value")
        rows.append(
            {
                "label": label,
                "lift": lift,
                "low": low,
                "high": high,
                "seq_low": seq_low,
                "seq_high": seq_high,
                "color": color,
                "hover": (
                    f"{c['variant']} vs {c['control']}, {c['metric']}<br>"
                    f"lift {lift:+.2%}"
                    + ("" if low is None else f", 95% interval [{low:+.2%}, {high:+.2%}]")
                    + (
                        ""
                        if seq_low is None
                        else f"<br>always-valid [{seq_low:+.2%}, {seq_high:+.2%}]"
                    )
                    + ("" if p is None else f"<br>p = {p:.3g}")
                ),
            }
        )
    height = 90 + 34 * max(len(rows), 3)
    fig = go.Figure(
        layout=_layout(
            "lift vs control: 95% interval (whiskers), always-valid interval (pale bar)",
            height=height,
            hovermode="closest",
            showlegend=False,
            margin={"l": 20, "r": 30, "t": 44, "b": 40},
        )
    )
    if not rows:
        _no_data(fig, "no comparison: the scorecard needs a control and another variant")
        return fig
    labels = [r["label"] for r in rows]
    fig.update_yaxes(
        type="category",
        categoryorder="array",
        categoryarray=list(reversed(labels)),
        rangemode="normal",
        gridcolor="#f3f3f3",
        automargin=True,
    )
    fig.update_xaxes(
        type="linear",
        tickformat="+.1~%",
        hoverformat="+.2%",
        zeroline=True,
        zerolinecolor="#444444",
        zerolinewidth=1.5,
        title={"text": "relative to control"},
    )
    seq = [r for r in rows if r["seq_low"] is not None]
    fig.add_trace(
        go.Scatter(
            x=[(r["seq_low"] + r["seq_high"]) / 2 for r in seq],
            y=[r["label"] for r in seq],
            mode="markers",
            marker={"size": 1, "opacity": 0},
            error_x={
                "type": "data",
                "symmetric": True,
                "array": [(r["seq_high"] - r["seq_low"]) / 2 for r in seq],
                "thickness": 12,
                "width": 0,
                "color": "rgba(110,119,129,0.22)",
            },
            hoverinfo="skip",
            name="always-valid interval",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[r["lift"] for r in rows],
            y=labels,
            mode="markers+text",
            text=[f"{r['lift']:+.1%}" for r in rows],
            textposition="top center",
            textfont={"size": 11, "color": [r["color"] for r in rows]},
            marker={"size": 10, "symbol": "diamond", "color": [r["color"] for r in rows]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [0 if r["high"] is None else r["high"] - r["lift"] for r in rows],
                "arrayminus": [0 if r["low"] is None else r["lift"] - r["low"] for r in rows],
                "thickness": 2,
                "width": 6,
                "color": "#444444",
            },
            hovertext=[r["hover"] for r in rows],
            hoverinfo="text",
            name="lift",
        )
    )
    return fig
