"""`make bench`: batch and streaming figures, printed as a table and written as JSON.

    make bench                                   # everything, default sizes
    make bench BENCH_ARGS="--only batch --beacons 500000"
    make bench BENCH_ARGS="--only stream --rates 2000,5000,10000 --step-seconds 240"

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
}


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
            met = value >= goal if op == ">=" else value <= goal
            rows.append((name, _cell(value), f"{op} {goal:,}", "yes" if met else "NO"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("batch", "stream"), help="one part only")
    parser.add_argument("--beacons", type=int, default=2_000_000, help="lines in the batch hour")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--rates", default="2000,5000,10000,20000", help="stream input rates to step through"
    )
    parser.add_argument("--step-seconds", type=int, default=240, help="run time per rate")
    parser.add_argument("--trigger-seconds", type=int, default=60)
    args = parser.parse_args(argv)
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
    if args.only in (None, "batch"):
        results["parts"]["batch"] = batch.run(cache, args.beacons, args.seed, progress)
    if args.only in (None, "stream"):
        from bench import stream

        rates = [int(r) for r in args.rates.split(",")]
        results["parts"]["stream"] = stream.run(
            rates, args.step_seconds, args.trigger_seconds, args.seed, progress
        )
    out = HERE / "results" / f"{results['when']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    print(f"\nresults: {out}")
    figures = results["parts"].get("batch", {})
    correct = figures.get("metrics_agree", True) and figures.get("rerun_agrees", True)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
