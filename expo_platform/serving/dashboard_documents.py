"""The dashboard's documents: the JSON that each page polls (`/api/overview`,
`/api/experiment/<name>`), its HTML pieces and its Plotly figures, with a version that
changes only when what they show changes.
"""

from __future__ import annotations

import hashlib
import html
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from plotly.io.json import to_json_plotly

from expo_platform.analysis import charts, hourly_charts, lift_charts
from expo_platform.analysis.report_files import latest_scorecard
from expo_platform.analysis.reports import scorecard_html
from expo_platform.serving.dashboard_data import (
    QUALITY_HOURS,
    ROLLING_HOURS,
    DashboardData,
    Experiment,
    _moment,
    _shown,
    _stamp,
)
from expo_platform.serving.dashboard_fragments import (
    _count,
    _drift_table,
    _facts,
    _open_hour,
    _quality_table,
    _rolling_table,
    _split_text,
    _srm_badge,
    _trends_note,
    _variant_list,
)
from expo_platform.serving.reconcile import reconcile_hours


class Dashboard(DashboardData):
    """What the pages show, read from the metric store and the scorecards on each request."""

    # -- the overview ---------------------------------------------------------------------

    def overview(self) -> dict:
        """The overview page's document: experiments, data quality and drift."""
        exps = self.experiments()
        rolling = self.latest_rolling()
        html_parts = {"experiments": self._experiments_table(exps, rolling)}
        store = self.store()
        quality_spans = store.key_spans("beacons_total")
        newest = max(
            [s.last_hour for s in quality_spans] + [e.last_hour for e in exps.values()],
            default=None,
        )
        figures: dict[str, list] = {"quality": [], "drift": []}
        if newest is None:
            html_parts["quality-note"] = (
                "<p class=empty>No data-quality points yet: the batch layer's data_quality "
                "asset and the speed layer write them hour by hour.</p>"
            )
            html_parts["quality-table"] = html_parts["drift-table"] = ""
            html_parts["drift-note"] = (
                "<p class=empty>No hour that both layers have written yet: the drift of the "
                "reconciliation check shows here once the batch layer has finished an hour "
                "the speed layer also wrote.</p>"
            )
            return self._document(html_parts, figures, newest)
        since = _stamp(_moment(newest) - timedelta(hours=QUALITY_HOURS - 1))
        quality = store.query(layer="merged", quality=True, hour_from=since, hour_to=newest)
        figures["quality"].append(_figure("quality-chart", hourly_charts.quality_figure(quality)))
        html_parts["quality-note"] = (
            f"<p class=note>The last {QUALITY_HOURS} hours up to {_shown(newest)}, from the "
            "merged view (the batch layer's counts where an hour has them, else the speed "
            "layer's); late beacons come from the speed layer only.</p>"
        )
        html_parts["quality-table"] = _quality_table(quality)
        tolerance = self.settings.batch.reconcile_tolerance
        drift = reconcile_hours(store, since, newest, tolerance)
        figures["drift"].append(
            _figure("drift-chart", hourly_charts.drift_figure(drift, tolerance))
        )
        html_parts["drift-note"] = (
            "<p class=note>The reconciliation check of every hour both layers have written: "
            "per metric, Σ|speed − batch| / Σ|batch| over the hour's keys; an hour passes "
            f"within {tolerance:.2%} (EXPO_RECONCILE_TOLERANCE). The batch layer is the "
            "reference.</p>"
        )
        html_parts["drift-table"] = _drift_table(drift)
        return self._document(html_parts, figures, newest)

    def _experiments_table(self, exps: dict[str, Experiment], rolling: dict) -> str:
        if not exps:
            return (
                "<p class=empty>The metric store holds no experiment points yet. Points appear "
                "here as the speed layer (<code>expo stream</code>) or the batch layer "
                "(<code>expo batch</code>, <code>make demo</code>) writes them; this page "
                "refreshes itself.</p>"
            )
        rows = []
        for exp in exps.values():
            split = self.split(exp, rolling)
            colors = charts.variant_colors(exp.variants)
            live = {
                metric: sum(
                    p.value
                    for (m, e, _, population), p in rolling.items()
                    if m == metric and e == exp.name and population == "assigned"
                )
                for metric in charts.ROLLING_METRICS
            }
            has_live = any(
                e == exp.name and population == "assigned" for (_, e, _, population) in rolling
            )
            rows.append(
                "<tr>"
                f'<td class=name><a href="/experiment/{quote(exp.name, safe="")}">'
                f"{html.escape(exp.name)}</a></td>"
                f"<td class=name>{_variant_list(exp.variants, colors)}</td>"
                f"<td class=name>{_split_text(split, colors)}</td>"
                f"<td>{exp.days_running:.1f}</td>"
                f"<td class=name>{_shown(exp.first_hour)}</td>"
                f"<td class=name>{_shown(exp.last_hour)}</td>"
                f"<td>{_count(live['visitors_rolling_1h']) if has_live else '–'}</td>"
                f"<td>{_count(live['visitors_rolling_24h']) if has_live else '–'}</td>"
                f"<td class=name>{_srm_badge(split, len(exp.variants))}</td>"
                "</tr>"
            )
        head = (
            "<thead><tr><th>experiment</th><th>variants</th><th>traffic split</th>"
            "<th>days running</th><th>first hour</th><th>newest hour</th>"
            "<th>visitors, last hour</th><th>visitors, last 24 h</th><th>sample ratio</th>"
            "</tr></thead>"
        )
        return (
            f"<table class=experiments>{head}<tbody>{''.join(rows)}</tbody></table>"
            "<p class=note>Visitors of the last hour and 24 hours: the speed layer's rolling "
            "counts of the assigned population, summed over the variants. The split and the "
            "sample-ratio test come from the latest scorecard, else from the rolling 24-hour "
            "visitors; flagged when p &lt; 0.001.</p>"
        )

    # -- one experiment -------------------------------------------------------------------

    def experiment_page(self, name: str, population: str, hours: int) -> dict:
        """The experiment page's document (raises UnknownExperiment)."""
        exp = self.experiment(name)
        store = self.store()
        colors = charts.variant_colors(exp.variants)
        rolling = self.latest_rolling(name)
        parts: dict[str, str] = {}
        figures: dict[str, list] = {"rolling": [], "lift": [], "trends": []}
        split = self.split(exp, rolling)
        parts["facts"] = _facts(exp, split, colors, population)
        if population not in exp.populations:
            parts["population-note"] = (
                f"<p class=empty>The store has no {html.escape(population)} points of "
                f"{html.escape(name)}: no visitor qualified yet.</p>"
            )
        else:
            parts["population-note"] = ""
        # Rolling visitors, live.
        parts["rolling-now"] = _rolling_table(exp, rolling, population, colors)
        newest_stamp = max(
            (p.hour for p in rolling.values() if p.population == population), default=None
        )
        if newest_stamp:
            since = _stamp(_moment(newest_stamp) - timedelta(hours=ROLLING_HOURS))
            recent = [
                p
                for p in store.query(
                    layer="speed",
                    experiment=name,
                    metrics=charts.ROLLING_METRICS,
                    hour_from=since,
                )
                if p.population == population
            ]
            for metric in charts.ROLLING_METRICS:
                figures["rolling"].append(
                    _figure(
                        f"rolling-{metric}", hourly_charts.rolling_figure(metric, recent, colors)
                    )
                )
        # The latest scorecard.
        parts["scorecard"], lift = self._scorecard(exp, population, colors)
        if lift is not None:
            figures["lift"].append(_figure("lift-chart", lift))
        # Hourly trends from the merged view.
        since = _stamp(_moment(exp.last_hour) - timedelta(hours=hours - 1)) if hours else None
        points = [
            p
            for p in store.query(
                layer="merged",
                experiment=name,
                metrics=charts.HOURLY_METRICS,
                hour_from=since,
                hour_to=exp.last_hour,
            )
            if p.population == population
        ]
        series = hourly_charts.hourly_series(points)
        open_hour = _open_hour(points)
        for metric in charts.CHARTED:
            figure = hourly_charts.trend_figure(
                metric, series.get(metric, {}), colors, merged=True, open_hour=open_hour
            )
            figures["trends"].append(_figure(f"trend-{metric}", figure))
        newest = max([exp.last_hour, *(p.hour for p in rolling.values())])
        parts["trends-note"] = _trends_note(points, open_hour, hours)
        return self._document(parts, figures, newest)

    def _scorecard(self, exp: Experiment, population: str, colors: dict):
        if len(exp.variants) < 2:
            return (
                f"<p class=empty>{html.escape(exp.name)} has one variant "
                f"({html.escape(exp.variants[0])}): there is nothing to compare it with, so "
                "there is no scorecard, lift or sample-ratio test. Its hourly metrics are "
                "below.</p>",
                None,
            )
        found = latest_scorecard(self.settings, exp.name, population)
        if not found:
            return (
                "<p class=empty>No scorecard yet: the daily analysis writes one when the "
                "batch layer has finished a whole day of this experiment (the "
                "<code>daily_analysis</code> job, or <code>expo batch</code> over a day). "
                "<code>expo scorecard --experiment NAME</code> computes one on demand.</p>",
                None,
            )
        day, card = found
        note = (
            f"<p class=note>Scorecard of the {html.escape(population)} population up to "
            f"{day.isoformat()} ({card.get('from')} .. {card.get('to')}), control "
            f"<b>{html.escape(str(card.get('control')))}</b>. The lift chart shows each "
            "difference relative to the control's value.</p>"
        )
        return note + scorecard_html(card), lift_charts.lift_figure(card, colors)

    def _document(self, parts: dict[str, str], figures: dict[str, list], newest) -> dict:
        body = {"html": parts, "figures": figures, "newest": newest and _shown(newest)}
        text = to_json_plotly(body)
        return {
            **body,
            "version": hashlib.sha1(text.encode()).hexdigest()[:16],
            "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _figure(div_id: str, fig) -> dict:
    return {"id": div_id, "figure": fig.to_plotly_json()}
