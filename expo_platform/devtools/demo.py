"""`make demo`: two days of traffic through the batch layer, then a summary. The three
experiments start on the second day; the first is the visitors' history before it, which
CUPED uses to narrow the scorecards' intervals.

Runs on the embedded defaults (local Spark, the project-local lake, SQLite).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from datetime import timedelta

from expo_platform.core.hours import hour_iso, hour_label, parse_hour
from expo_platform.logs import run_command
from expo_platform.serving.store import MetricStore, Point
from expo_platform.settings import Settings

DEMO_START = parse_hour("2026-03-01T00")
DEMO_HOURS = 48
EXPERIMENTS_FROM = parse_hour("2026-03-02T00")  # the day before is the pre-period
DEMO_VISITORS = 20_000
PROPENSITY = 1.0  # visitors who browse and order more do so on both days


def summarize(points: list[Point], last_hour: str) -> list[dict]:
    """Per experiment and variant (assigned population): totals and ratios over the day."""
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for p in points:
        if p.population != "assigned":
            continue
        key = (p.experiment, p.variant)
        if p.metric == "visitors_24h":
            if p.hour == last_hour:
                sums[key]["visitors_day"] = p.value
        else:
            sums[key][p.metric] += p.value
    rows = []
    for (experiment, variant), s in sorted(sums.items()):
        visitors = s.get("visitors_day", 0.0)
        rows.append(
            {
                "experiment": experiment,
                "variant": variant,
                "visitors": int(visitors),
                "visits": int(s["visits"]),
                "orders": int(s["orders"]),
                "bounce_rate": _ratio(s["bounces"], s["visits"]),
                "error_rate": _ratio(s["errors"], s["page_views"]),
                "orders_per_visit": _ratio(s["orders"], s["visits"]),
                "revenue_per_visitor": _ratio(s["revenue"], visitors),
                "mean_page_load_ms": _ratio(s["page_load_ms_sum"], s["page_load_ms_count"]),
            }
        )
    return rows


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def print_summary(rows: list[dict]) -> None:
    """An aligned table of the summary rows."""
    columns = list(rows[0]) if rows else []
    text = [
        {
            c: (f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v))
            for c, v in r.items()
        }
        for r in rows
    ]
    widths = {c: max(len(c), *(len(r[c]) for r in text)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in text:
        print("  ".join(r[c].rjust(widths[c]) for c in columns))


def cuped_lines(card: dict, metric: str = "orders") -> list[str]:
    """The metric's interval without and with CUPED, for each variant of a scorecard."""
    lines = []
    for c in card["comparisons"]:
        if c["metric"] != metric or c.get("cuped_ci_low") is None or c["ci_low"] is None:
            continue
        width, cuped_width = c["ci_high"] - c["ci_low"], c["cuped_ci_high"] - c["cuped_ci_low"]
        lines += [
            f"{card['experiment']} {c['variant']} {metric} per visitor: difference "
            f"{c['difference']:+.4f}, 95% interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
            f"(width {width:.4f})",
            f"  with CUPED ({card['cuped']['days']} days before exposure): difference "
            f"{c['cuped_difference']:+.4f}, 95% interval [{c['cuped_ci_low']:+.4f}, "
            f"{c['cuped_ci_high']:+.4f}] (width {cuped_width:.4f}, {1 - cuped_width / width:.0%} "
            f"narrower; variance reduction {c['cuped_variance_reduction']:.1%})",
        ]
    return lines


def run(settings: Settings) -> None:
    """Generate, process and summarize the demo day."""
    from expo_platform.analysis.daily import scorecard_path, trend_report_path
    from expo_platform.analysis.reports import scorecard_text
    from expo_platform.cli import load_orchestration
    from expo_platform.devtools.generator import GeneratorConfig, write_landing
    from expo_platform.ops.dagster_home import prepare_dagster_home

    started = time.monotonic()
    last = DEMO_START + timedelta(hours=DEMO_HOURS - 1)
    print(
        f"1/4 generating {DEMO_HOURS} hours of traffic from {DEMO_VISITORS:,} visitors "
        f"into {settings.lake.landing_dir}; the experiments start at {hour_label(EXPERIMENTS_FROM)}"
    )
    config = GeneratorConfig(
        start=DEMO_START,
        hours=DEMO_HOURS,
        visitors=DEMO_VISITORS,
        seed=7,
        dirty_fraction=0.02,
        experiments_from=EXPERIMENTS_FROM,
        propensity=PROPENSITY,
    )
    report = write_landing(
        config, settings.lake.landing_dir, progress=lambda line: print("   ", line)
    )
    print(f"    {sum(report.lines_by_hour.values()):,} lines written")

    print(
        f"2/4 batch layer over {hour_label(DEMO_START)} .. {hour_label(last)} "
        "(Spark local, Dagster runs recorded)"
    )
    project, build_defs, run_batch = load_orchestration()
    prepare_dagster_home(settings, project)
    run_batch(build_defs(settings), DEMO_START, last, progress=lambda line: print("   ", line))

    print("3/4 summary per experiment and variant, assigned population, both days")
    with MetricStore(settings.lake.metric_store) as store:
        points = store.query(layer="batch", hour_from=hour_iso(DEMO_START), hour_to=hour_iso(last))
        quality = store.query(
            layer="batch", quality=True, hour_from=hour_iso(DEMO_START), hour_to=hour_iso(last)
        )
    print_summary(summarize(points, hour_iso(last)))
    totals: dict[str, float] = defaultdict(float)
    for p in quality:
        totals[p.metric] += p.value
    print(
        "data quality: "
        + ", ".join(f"{k.removeprefix('beacons_')} {int(v):,}" for k, v in sorted(totals.items()))
    )
    day = EXPERIMENTS_FROM.date()
    print(
        f"4/4 scorecards of {day}: checkout-button's treatment raises the order rate by 20%; "
        "aa-check compares two identical variants"
    )
    cards = {}
    for experiment in ("checkout-button", "aa-check"):
        card = json.loads(scorecard_path(settings, day, experiment, "assigned").read_text())
        cards[experiment] = card
        print()
        print(scorecard_text(card))
    print()
    print("CUPED shrinks the interval (the covariate: each visitor's orders the day before):")
    for line in cuped_lines(cards["checkout-button"]):
        print("   ", line)
    report = trend_report_path(settings, day, "checkout-button", "assigned")
    print()
    print(f"trend report (open it in a browser, works offline): {report}")
    print(
        f"done in {time.monotonic() - started:.0f}s. Metrics: .venv/bin/expo metrics "
        "--experiment checkout-button --format table; scorecards: .venv/bin/expo scorecard "
        "--experiment checkout-button"
    )
    print("Open the Dagster UI (asset graph, runs, backfills): make ui, then http://127.0.0.1:3000")


def main() -> int:
    """Entry point of `python -m expo_platform.devtools.demo`."""
    return run_command("demo", run)


if __name__ == "__main__":
    sys.exit(main())
