"""`make bench`: batch and streaming figures, printed as a table and written as JSON.

    make bench                                   # everything, default sizes
    make bench BENCH_ARGS="--only batch --beacons 500000"
    make bench BENCH_ARGS="--only stream --rates 2000,5000,10000 --step-seconds 240"
    make bench BENCH_ARGS="--only batch,live --live-rates 2000,4000 --live-step-seconds 600"
    make bench BENCH_ARGS="--only connect --connect-beacons 100000"
    make soak                                    # the soak alone: 30 minutes of the platform

`stream` replays a compressed day as fast as the rate says (a stress case: each micro-batch
spans hours of event time); `live` sends wall-clock traffic, as production does, and its
sustained rate is compared with the batch layer's warm throughput measured in the same run;
`connect` times a small hour through `expo batch`, embedded and on a warm Spark Connect server.
`soak` (not in the default set) runs the whole platform under `make up`'s entry point at a
steady rate, with stream restarts injected, and checks that nothing is lost and that memory
and state stay flat (bench/soak.py).

Generated inputs are cached in bench/.cache; results go to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import psutil

from bench import batch
from expo_platform.logs import configure_logging

HERE = Path(__file__).resolve().parent
TARGETS = {
    "batch beacons/s": ("spark_beacons_per_s", ">=", 150_000),
    "Spark / DuckDB time": ("spark_over_duckdb", "<=", 2.5),
    "batch beacons/s, warm JVM": ("spark_warm_beacons_per_s", ">=", 150_000),
    "Spark / DuckDB time, warm JVM": ("spark_warm_over_duckdb", "<=", 2.5),
    "stream sustained beacons/s": ("sustained_beacons_per_s", ">=", 100_000),
    "freshness p99 (s)": ("freshness_p99_s", "<=", 120),
    "live stream / batch warm beacons/s": ("live_over_batch_warm", ">=", 1.0),
    "live freshness p99 / trigger": ("live_freshness_p99_triggers", "<=", 2.0),
    "small hour through expo batch, warm Connect server (s)": ("connect_server_hour_s", "<=", 15),
    "soak: produced = landed + quarantined": (
        "soak_produced_equals_landed_plus_quarantined",
        "==",
        True,
    ),
    "soak: speed = batch, finished hours": ("soak_speed_equals_batch", "==", True),
    "soak: stream memory flat": ("soak_stream_rss_flat", "==", True),
    "soak: stream state flat": ("soak_sessions_flat", "==", True),
    "soak: stream alive after the restarts": ("soak_stream_alive_at_end", "==", True),
}
PARTS = ("batch", "stream", "live", "connect", "soak")
DEFAULT_PARTS = ("batch", "stream", "live", "connect")  # the soak takes half an hour: asked for


def ratios(parts: dict) -> dict:
    """The targets that compare the layers, from figures of this one run."""
    batch, live = parts.get("batch", {}), parts.get("live", {})
    found = {}
    if batch.get("spark_warm_beacons_per_s") and "live_sustained_beacons_per_s" in live:
        found["live_over_batch_warm"] = round(
            live["live_sustained_beacons_per_s"] / batch["spark_warm_beacons_per_s"], 3
        )
    if live.get("live_freshness_p99_s") is not None:
        found["live_freshness_p99_triggers"] = round(
            live["live_freshness_p99_s"] / live["live_trigger_s"], 2
        )
    return found


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def table(results: dict) -> str:
    """One line per figure: value, target and whether it is met."""
    rows = [("figure", "value", "target", "met")]
    flat = {k: v for part in results["parts"].values() for k, v in part.items()}
    for name, (key, op, goal) in TARGETS.items():
        if flat.get(key) is not None:
            value = flat[key]
            met = {">=": value >= goal, "<=": value <= goal, "==": value == goal}[op]
            rows.append((name, _cell(value), f"{op} {_cell(goal)}", "yes" if met else "NO"))
    shown = {key for key, _, _ in TARGETS.values()}
    for key, value in flat.items():
        if key not in shown and not isinstance(value, list | dict):
            rows.append((key, _cell(value), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


STEP_COLUMNS = (
    ("rate/s", "rate"),
    ("delivered/s", "delivered_per_s"),
    ("sustained", "sustained"),
    ("batches", "batches"),
    ("max batch s", "max_batch_s"),
    ("lag high 1st/2nd half", "lag"),
    ("fresh p50 s", "freshness_p50_s"),
    ("fresh p99 s", "freshness_p99_s"),
    ("cpu s jvm", "jvm"),
    ("py workers", "python_workers"),
    ("driver py", "driver_python"),
    ("broker", "broker"),
    ("producer", "producer"),
    ("state B/open visit", "state_bytes_per_open_visit"),
)


def step_table(steps: list[dict]) -> str:
    """One line per live rate step: sustained or not, freshness, CPU by process, state."""
    rows = [tuple(title for title, _ in STEP_COLUMNS)]
    for step in steps:
        flat = {**step, **step["cpu_s"]}
        flat["lag"] = f"{step['lag_high_first_half']:,}/{step['lag_high_second_half']:,}"
        rows.append(tuple(_cell(flat.get(key, "-")) for _, key in STEP_COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(STEP_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)"
    )
    parser.add_argument("--beacons", type=int, default=2_000_000, help="lines in the batch hour")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--rates", default="2000,5000,10000,20000", help="stream input rates to step through"
    )
    parser.add_argument("--step-seconds", type=int, default=240, help="run time per rate")
    parser.add_argument("--trigger-seconds", type=int, default=60)
    parser.add_argument(
        "--live-rates", default="1000,2000,4000,8000", help="live traffic rates to step through"
    )
    parser.add_argument(
        "--live-step-seconds", type=int, default=600, help="run time per live rate (>= 600)"
    )
    parser.add_argument(
        "--connect-beacons", type=int, default=100_000, help="lines in the connect part's hour"
    )
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--soak-rate", type=int, default=40, help="live beacons/s of the soak")
    parser.add_argument(
        "--soak-restart-minutes", type=float, default=8.0, help="between injected restarts"
    )
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(DEFAULT_PARTS)
    if wanted - set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}")
    configure_logging("WARNING")
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    results: dict = {
        "when": batch.when(),
        "machine": {
            "cores": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
        },
        "args": vars(args),
        "parts": {},
    }
    if "batch" in wanted:
        results["parts"]["batch"] = batch.run(cache, args.beacons, args.seed, progress)
    if "live" in wanted:
        from bench import live

        rates = [int(r) for r in args.live_rates.split(",")]
        results["parts"]["live"] = live.run(
            rates, args.live_step_seconds, args.trigger_seconds, args.seed, progress
        )
    if "stream" in wanted:
        from bench import stream

        rates = [int(r) for r in args.rates.split(",")]
        results["parts"]["stream"] = stream.run(
            rates, args.step_seconds, args.trigger_seconds, args.seed, progress
        )
    if "connect" in wanted:
        from bench import connect

        results["parts"]["connect"] = connect.run(cache, args.connect_beacons, args.seed, progress)
    if "soak" in wanted:
        from bench import soak

        results["parts"]["soak"] = soak.run(
            args.soak_minutes, args.soak_rate, args.soak_restart_minutes, progress
        )
    results["parts"]["ratios"] = ratios(results["parts"])
    out = HERE / "results" / f"{results['when']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    if results["parts"].get("live", {}).get("live_step_details"):
        print("\nlive traffic, per rate step (CPU seconds per process over the step):")
        print(step_table(results["parts"]["live"]["live_step_details"]))
    print(f"\nresults: {out}")
    figures = results["parts"].get("batch", {})
    correct = figures.get("metrics_agree", True) and figures.get("rerun_agrees", True)
    correct = correct and results["parts"].get("connect", {}).get("connect_metrics_agree", True)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
