"""The `expo` command line: generate traffic, run the batch layer, read metrics, quality and
scorecards, serve the dashboard."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from expo_platform.core.hours import hour_iso, hour_label, parse_hour
from expo_platform.errors import ExpoError
from expo_platform.logs import run_command
from expo_platform.ops.dagster_home import POOL_LIMITS, ensure_dagster_home, prepare_dagster_home
from expo_platform.setting_values import REGION_PATTERN
from expo_platform.settings import SETTINGS_DOC, Settings, resolved_paths

log = logging.getLogger("expo")

POINT_COLUMNS = ("metric", "experiment", "variant", "population", "hour", "value")
QUALITY_COLUMNS = ("metric", "hour", "value")


def format_value(value: float) -> str:
    """Counts print as integers, amounts with at most six decimals."""
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))


def write_rows(rows: list[dict], columns: Sequence[str], fmt: str, out=None) -> None:
    """Print rows as an aligned table, CSV with exactly `columns`, or JSON."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    text = [{c: format_value(r[c]) if c == "value" else str(r[c]) for c in columns} for r in rows]
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(text)
        return
    widths = {c: max([len(c), *(len(r[c]) for r in text)]) for c in columns}
    out.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
    for r in text:
        out.write("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() + "\n")
    if not rows:
        out.write("(no points)\n")


def _hour_arg(text: str):
    try:
        return parse_hour(text)
    except ExpoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def project_dir() -> Path:
    """The folder of `definitions.py`: EXPO_PROJECT_DIR, else the nearest one up from here."""
    if os.environ.get("EXPO_PROJECT_DIR"):
        return Path(os.environ["EXPO_PROJECT_DIR"]).resolve()
    for folder in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parent.parent):
        if (folder / "definitions.py").is_file() and (folder / "workspace.yaml").is_file():
            return folder
    raise ExpoError("cannot find the project (definitions.py): run from it or set EXPO_PROJECT_DIR")


def load_orchestration():
    """The Dagster side (definitions and the batch runner), kept outside the library."""
    project = project_dir()
    if str(project) not in sys.path:
        sys.path.insert(0, str(project))
    definitions = importlib.import_module("definitions")
    runner = importlib.import_module("sensors.batch_runner")
    return project, definitions.build_defs, runner.run_batch


def cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from expo_platform.devtools.generator import GeneratorConfig, write_landing

    config = GeneratorConfig(
        start=args.start,
        hours=args.hours,
        visitors=args.visitors,
        seed=args.seed,
        dirty_fraction=args.dirty,
        trap_fraction=args.traps,
    )
    if args.kafka:
        _produce(args, settings, config)
        return
    report = write_landing(config, settings.lake.landing_dir, progress=print)
    rejects = ", ".join(f"{k} {v:,}" for k, v in sorted(report.rejects.items()))
    print(
        f"wrote {sum(report.lines_by_hour.values()):,} lines in {len(report.files)} files under "
        f"{settings.lake.landing_dir}: {report.clean:,} clean, {report.duplicates:,} duplicates"
        + (f", rejects: {rejects}" if rejects else "")
    )
    if config.trap_fraction > 0:
        traps = ", ".join(f"{k} {v:,}" for k, v in sorted(report.traps.items()))
        print(f"trap lines (counted in the figures above): {traps}")


def _produce(args: argparse.Namespace, settings: Settings, config) -> None:
    """`expo generate --kafka`: live traffic on the wall clock, or `--replay` of a period."""
    from expo_platform.devtools.producer import produce_live, produce_realtime

    topic = args.topic or settings.stream.kafka_topic
    if not args.rate:
        raise ExpoError("--kafka needs --rate")
    if args.replay:
        if not args.duration:
            raise ExpoError("--replay needs --duration")
        print(f"replaying to {topic}@{args.kafka} at {args.rate:,.0f}/s for {args.duration:g}s")
        sent = produce_live(args.kafka, topic, config, args.rate, args.duration, progress=print)
    else:
        backlog = args.backlog_minutes
        print(
            f"live traffic to {topic}@{args.kafka}, about {args.rate:,.0f} beacons/s on the "
            f"wall clock, after a backlog of the last {backlog:g} minutes"
        )
        sent = produce_realtime(
            args.kafka,
            topic,
            config,
            args.rate,
            backlog,
            args.duration,
            progress=print,
            start_in=args.start_in,
        )
    print(sent.summary())
    if sent.failed:
        raise ExpoError(f"{sent.failed:,} messages were not delivered: {sent.errors}")


def cmd_stream(args: argparse.Namespace, settings: Settings) -> None:

    from expo_platform.speed.app import run_stream

    if args.trigger:
        settings = settings.replace(stream={"trigger_seconds": args.trigger})
    settings.lake.root.mkdir(parents=True, exist_ok=True)
    run_stream(settings, until_idle=args.until_idle)


def cmd_batch(args: argparse.Namespace, settings: Settings) -> None:
    from expo_platform.lake import require_lake

    require_lake(settings)
    project, build_defs, run_batch = load_orchestration()
    prepare_dagster_home(settings, project)
    defs = build_defs(settings)
    print(
        f"batch {hour_label(args.first)} .. {hour_label(args.last)} "
        f"on {settings.spark.remote or settings.spark.master}, "
        f"lake {settings.lake.root}, runs recorded in {settings.local.dagster_home}"
    )
    done = run_batch(defs, args.first, args.last, progress=print)
    print(
        f"done: {done['ingested']} hours ingested, metrics of {done['metrics']} hours written, "
        f"{done['days']} days analysed"
    )


def _open_store(settings: Settings):
    from expo_platform.serving.store import MetricStore

    return MetricStore(settings.lake.metric_store)


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> None:
    with _open_store(settings) as store:
        points = store.query(
            layer=args.layer,
            experiment=args.experiment,
            hour_from=hour_iso(args.first) if args.first else None,
            hour_to=hour_iso(args.last) if args.last else None,
        )
    rows = [{c: getattr(p, c) for c in POINT_COLUMNS} for p in points]
    write_rows(rows, POINT_COLUMNS, args.format)


def cmd_quality(args: argparse.Namespace, settings: Settings) -> None:
    with _open_store(settings) as store:
        points = store.query(
            layer="batch",
            quality=True,
            hour_from=hour_iso(args.first) if args.first else None,
            hour_to=hour_iso(args.last) if args.last else None,
        )
    rows = sorted(
        ({"metric": p.metric, "hour": p.hour, "value": p.value} for p in points),
        key=lambda r: (r["metric"], r["hour"]),
    )
    write_rows(rows, QUALITY_COLUMNS, args.format)


def cmd_scorecard(args: argparse.Namespace, settings: Settings) -> None:
    from expo_platform.analysis.daily import compute_scorecard
    from expo_platform.analysis.reports import scorecard_text
    from expo_platform.lake import require_lake
    from expo_platform.spark import get_spark

    require_lake(settings)
    if args.first and args.last and args.last < args.first:
        raise ExpoError(f"--from {args.first} is after --to {args.last}")
    card = compute_scorecard(
        get_spark(settings), settings, args.experiment, args.population, args.first, args.last
    )
    if args.format == "json":
        json.dump(card, sys.stdout, indent=2, sort_keys=True, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(scorecard_text(card))


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> None:
    from expo_platform.serving.dashboard import serve

    serve(settings, args.host, args.port)


def _day_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day like 2026-03-02") from None


def cmd_writer(args: argparse.Namespace, settings: Settings) -> None:
    from expo_platform.speed.lease import switch_writer, writer_status

    group = settings.stream.consumer
    if args.action == "switch":
        if not args.to or not re.fullmatch(REGION_PATTERN, args.to):
            raise ExpoError(f"--to needs a region name, not {args.to!r}")
        switch_writer(settings.stream.zookeeper, group, args.to)
        status = writer_status(settings.stream.zookeeper, group)
        if args.to not in status["members"]:
            print(f"note: region {args.to} is not running; the writer stays {status['holder']}")
        print(f"preferred writer of {group}: {args.to} (writing now: {status['holder'] or '-'})")
        return
    status = writer_status(settings.stream.zookeeper, group)
    print(
        f"{group}: writing {status['holder'] or '-'}, preferred {status['preferred'] or '-'}, "
        f"running {', '.join(status['members']) or '-'}"
    )


def cmd_dagster_home(args: argparse.Namespace, settings: Settings) -> None:
    home = ensure_dagster_home(settings, project_dir(), refresh=True)
    print(f"Dagster home {home}: dagster.yaml and pool limits {POOL_LIMITS}")


def cmd_settings(args: argparse.Namespace, settings: Settings) -> None:
    shown = None
    for section, env, default, doc in SETTINGS_DOC:
        if section != shown:
            print(f"\n[{section or 'general'}]")
            shown = section
        print(f"  {env:32} {default!s:34} {doc}")
    print("\nresolved paths of this process (relative settings are anchored at EXPO_HOME):")
    for name, where in resolved_paths(settings).items():
        print(f"  {name:28} {where}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic click stream into the landing zone")
    gen.add_argument("--start", type=_hour_arg, default=parse_hour("2026-03-02T00"))
    gen.add_argument("--hours", type=int, default=24)
    gen.add_argument("--visitors", type=int, default=5000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--dirty", type=float, default=0.02, help="share of dirty lines (0..0.5)")
    gen.add_argument(
        "--traps",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of visitors (0..1) that also get an adversarial, valid trap session at the "
        "edge of a metric rule: 3-5 hour visits, 35-minute gaps, late duplicates, out-of-order "
        "beacons, qualification flips, multi-variant visitors, 13-15 hour robots, experiments "
        "listed twice, same-ts beacons; at least one of each kind (default 0: none, the "
        "traffic is unchanged)",
    )
    gen.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="produce to Kafka instead: live traffic stamped with the wall clock (visitors "
        "arrive, browse, order and leave in real time); --start and --hours apply to --replay",
    )
    gen.add_argument("--topic", help="Kafka topic (default EXPO_KAFKA_TOPIC)")
    gen.add_argument("--rate", type=float, help="beacons per second in all, with --kafka")
    gen.add_argument(
        "--start-in",
        type=float,
        default=0.0,
        help="with --kafka, live: seconds ahead of the clock the traffic starts, so the "
        "generator's warm-up is done before the first line is due (benchmarks)",
    )
    gen.add_argument(
        "--duration", type=float, help="seconds to produce for, with --kafka (live: no end)"
    )
    gen.add_argument(
        "--backlog-minutes",
        type=float,
        default=0.0,
        help="live: first send the last N minutes of traffic as fast as the broker takes them",
    )
    gen.add_argument(
        "--replay",
        action="store_true",
        help="with --kafka: replay the period from --start at --rate instead (event time runs "
        "ahead of the clock; for benchmarks)",
    )
    gen.set_defaults(func=cmd_generate)

    stream = sub.add_parser("stream", help="run the speed layer (Spark Structured Streaming)")
    stream.add_argument(
        "--until-idle", action="store_true", help="process what is available, then stop"
    )
    stream.add_argument("--trigger", type=int, help="trigger interval in seconds")
    stream.set_defaults(func=cmd_stream)

    bat = sub.add_parser("batch", help="materialize the hourly batch graph for a range of hours")
    bat.add_argument("--from", dest="first", type=_hour_arg, required=True)
    bat.add_argument("--to", dest="last", type=_hour_arg, required=True)
    bat.set_defaults(func=cmd_batch)

    met = sub.add_parser("metrics", help="print experiment metrics from the store")
    met.add_argument("--layer", choices=("batch", "speed", "merged"), default="merged")
    met.add_argument("--experiment")
    met.add_argument("--from", dest="first", type=_hour_arg)
    met.add_argument("--to", dest="last", type=_hour_arg)
    met.add_argument("--format", choices=("table", "csv", "json"), default="table")
    met.set_defaults(func=cmd_metrics)

    qual = sub.add_parser("quality", help="print data-quality metrics (batch layer)")
    qual.add_argument("--from", dest="first", type=_hour_arg)
    qual.add_argument("--to", dest="last", type=_hour_arg)
    qual.add_argument("--format", choices=("table", "csv", "json"), default="table")
    qual.set_defaults(func=cmd_quality)

    card = sub.add_parser("scorecard", help="compare an experiment's variants against control")
    card.add_argument("--experiment", required=True)
    card.add_argument("--population", choices=("assigned", "qualified"), default="assigned")
    card.add_argument("--from", dest="first", type=_day_arg, help="first day, e.g. 2026-03-02")
    card.add_argument("--to", dest="last", type=_day_arg, help="last day (inclusive)")
    card.add_argument("--format", choices=("table", "json"), default="table")
    card.set_defaults(func=cmd_scorecard)

    dash = sub.add_parser(
        "dashboard",
        help="serve the experimenters' live dashboard on loopback (experiments, hourly trends "
        "of both layers, rolling visitors, scorecards, data quality, drift)",
    )
    dash.add_argument(
        "--port", type=int, help="port to listen on (default EXPO_DASHBOARD_PORT, 8050; 0: any)"
    )
    dash.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to listen on: 127.0.0.1 (default), ::1 or localhost",
    )
    dash.set_defaults(func=cmd_dashboard)

    wr = sub.add_parser(
        "writer", help="which region's streaming app writes (status), or move it (switch)"
    )
    wr.add_argument("action", choices=("status", "switch"))
    wr.add_argument("--to", metavar="REGION", help="the region that should write, with switch")
    wr.set_defaults(func=cmd_writer)

    dh = sub.add_parser(
        "dagster-home", help="(re)write DAGSTER_HOME: the project's dagster.yaml, pool limits"
    )
    dh.set_defaults(func=cmd_dagster_home)

    st = sub.add_parser("settings", help="list the settings and their environment variables")
    st.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `expo` command; errors print as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    return run_command("expo", lambda settings: args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
