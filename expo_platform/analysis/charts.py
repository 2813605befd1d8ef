"""Every chart of the dashboard and the trend reports, as Plotly figures: what the charts
share (the metrics charted, their titles and colours, the common layout, plotly.js itself).
The figures are built in `hourly_charts` (metrics per hour, rolling visitors, data quality,
speed-versus-batch drift) and `lift_charts` (lifts against control).

These modules build the figures; `expo dashboard` sends them as JSON to the plotly.js that
ships inside the `plotly` package (served by the dashboard itself), and the daily trend
reports embed them with that same plotly.js inline. Nothing comes from the network: no CDN,
no map tiles, no web fonts, no MathJax.

Plotly chooses the ticks: counts get thousands separators and no SI suffixes, rates and
lifts are percent axes, hours are UTC dates. The batch layer is drawn solid, the speed
layer dashed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from expo_platform.analysis.stats import CONTROL, RATIO_METRICS

# Ratios are derived at read time (METRICS.md), never stored: the scorecard's ratio metrics,
# and two more that the charts show.
RATIOS = {
    **RATIO_METRICS,
    "orders_per_visit": ("orders", "visits"),
    "mean_page_load_ms": ("page_load_ms_sum", "page_load_ms_count"),
}
# The stored hourly metrics charted as they are (page_load_ms_sum and _count only through
# their ratio), then the ratios.
STORED_CHARTED = (
    "visitors",
    "visitors_24h",
    "visits",
    "page_views",
    "orders",
    "units",
    "revenue",
    "errors",
    "bounces",
)
CHARTED = (*STORED_CHARTED, *RATIOS)
# What the charts need from the store.
HOURLY_METRICS = (
    *STORED_CHARTED,
    *sorted({m for pair in RATIOS.values() for m in pair} - set(STORED_CHARTED)),
)
ROLLING_METRICS = ("visitors_rolling_1h", "visitors_rolling_24h")
PERCENT_METRICS = frozenset({"bounce_rate", "error_rate"})
LOWER_IS_BETTER = frozenset({"bounce_rate", "error_rate", "mean_page_load_ms"})
TITLES = {
    "visitors": "visitors per hour",
    "visitors_24h": "visitors in the 24 hours up to the hour",
    "visits": "visits per hour",
    "page_views": "page views per hour",
    "orders": "orders per hour",
    "units": "units ordered per hour",
    "revenue": "revenue per hour",
    "errors": "errors per hour",
    "bounces": "bounces per hour",
    "bounce_rate": "bounce rate (bounces / visits)",
    "error_rate": "error rate (errors / page views)",
    "revenue_per_visit": "revenue per visit",
    "orders_per_visit": "orders per visit",
    "mean_page_load_ms": "mean page load (ms)",
    "visitors_rolling_1h": "visitors in the last hour (rolling, live)",
    "visitors_rolling_24h": "visitors in the last 24 hours (rolling, live)",
}
# Control first in grey-blue, then distinct hues; colour-blind safe (Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F")
LAYER_DASH = {"batch": "solid", "speed": "dash"}
BETTER, WORSE, UNSURE = "#1a7f37", "#cf222e", "#6e7781"
QUALITY_COLORS = {
    "beacons_rejected_malformed_json": "#cf222e",
    "beacons_rejected_missing_field": "#fb8f44",
    "beacons_rejected_bad_field": "#d4a72c",
    "beacons_rejected_wrong_partition": "#8250df",
    "beacons_duplicate": "#0969da",
    "beacons_late": "#6e7781",
}
# plotly.js options for every chart: no logo link, no cloud export, resize with the page.
CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


@functools.cache
def plotly_js_path() -> Path:
    """plotly.min.js as the installed `plotly` package ships it."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"plotly.js is missing from the plotly package: {path}")
    return path


@functools.cache
def plotly_js_version() -> str:
    """The version of the packaged plotly.js, e.g. `3.1.0`."""
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()


def inline_plotly_js() -> str:
    """plotly.js for a <script> element of a self-contained page: a `</script` inside it
    (none in today's build) would end the element early, so it is written `<\\/script`,
    which reads the same in JavaScript."""
    text = plotly_js_path().read_text(encoding="utf-8")
    return re.sub(r"</(script)", r"<\\/\\1", text, flags=re.IGNORECASE)


def plot_time(stamp: str) -> str:
    """A stored hour or minute stamp (`2026-03-02T05:00:00Z`) as plotly.js reads a UTC
    time: `2026-03-02 05:00` (plotly.js has no time zones; every axis says UTC)."""
    return f"{stamp[:10]} {stamp[11:16]}"


def ms_time(ms: float) -> str:
    """Epoch milliseconds as a plotly.js UTC time."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def ordered_variants(variants: Iterable[str]) -> list[str]:
    """Control first, then the others by name."""
    names = set(variants)
    return sorted(names, key=lambda v: (v != CONTROL, v))


def variant_colors(variants: Iterable[str]) -> dict[str, str]:
    """A stable colour per variant: control the first of the palette."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered_variants(variants))}


def _layout(title: str, *, height: int, percent: bool = False, **extra) -> dict:
    """The look every chart shares; `uirevision` keeps a reader's zoom across live updates."""
    yaxis = {
        "gridcolor": "#ebebeb",
        "zerolinecolor": "#bbbbbb",
        "rangemode": "tozero",
        "separatethousands": True,
        "exponentformat": "none",
        "automargin": True,
    }
    if percent:
        yaxis |= {"tickformat": ".2~%", "hoverformat": ".2%"}
    else:
        yaxis |= {"hoverformat": ",.4~f"}
    layout = {
        "template": "none",
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        "height": height,
        "margin": {"l": 64, "r": 20, "t": 44, "b": 40},
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "hovermode": "x unified",
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.22, "yanchor": "top"},
        "xaxis": {
            "type": "date",
            "gridcolor": "#ebebeb",
            "linecolor": "#999999",
            "ticks": "outside",
            "hoverformat": "%Y-%m-%d %H:%M UTC",
            "automargin": True,
        },
        "yaxis": yaxis,
        "uirevision": title,
    }
    layout.update(extra)
    return layout


def _no_data(fig: go.Figure, text: str = "no data yet") -> None:
    fig.update_layout(showlegend=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(
        text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 13}
    )


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A figure as an HTML fragment that draws itself with the page's plotly.js."""
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config=CONFIG,
        default_width="100%",
    )
