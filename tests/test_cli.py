"""The `expo` command as a user runs it: a subprocess, real files, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


def expo(*args, env: dict, cwd: Path = PROJECT, timeout: int = 600):
    """Run `expo` in a fresh interpreter with only the given EXPO_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "expo_platform.cli", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result, text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("expo: error: ") and text in lines[0], lines[0]


def test_missing_lake(tmp_path):
    result = expo(
        "batch",
        "--from",
        "2026-03-02T00",
        "--to",
        "2026-03-02T01",
        env={"EXPO_LAKE": str(tmp_path / "nowhere")},
    )
    assert_one_line_error(result, "does not exist")


def test_invalid_setting(tmp_path):
    result = expo("metrics", env={"EXPO_MAX_REJECT_RATE": "x", "EXPO_LAKE": str(tmp_path)})
    assert_one_line_error(result, "EXPO_MAX_REJECT_RATE='x' is not valid")


def test_unknown_hour(tmp_path):
    (tmp_path / "lake").mkdir()
    result = expo(
        "batch",
        "--from",
        "2025-06-01T00",
        "--to",
        "2025-06-01T01",
        env={"EXPO_LAKE": str(tmp_path / "lake"), "DAGSTER_HOME": str(tmp_path / "dh")},
    )
    assert_one_line_error(result, "outside the hourly partitions")
    result = expo("metrics", "--from", "noon", env={"EXPO_LAKE": str(tmp_path)})
    assert result.returncode == 2 and "not an hour: 'noon'" in result.stderr


def test_unreachable_store(tmp_path):
    result = expo(
        "metrics",
        env={
            "EXPO_LAKE": str(tmp_path),
            "EXPO_METRIC_STORE": "postgresql+psycopg://expo:s3cret@127.0.0.1:9/expo",
        },
    )
    assert_one_line_error(result, "unreachable")
    assert "s3cret" not in result.stderr


@pytest.mark.slow
def test_generate_batch_metrics_quality(tmp_path):
    """The README's flow on a small lake: generate, batch, then read the store as CSV."""
    env = {"EXPO_LAKE": str(tmp_path / "lake"), "DAGSTER_HOME": str(tmp_path / "dh")}
    gen = expo(
        "generate",
        "--start",
        "2026-03-02T00",
        "--hours",
        "3",
        "--visitors",
        "300",
        "--dirty",
        "0.02",
        env=env,
    )
    assert gen.returncode == 0, gen.stderr
    assert "hour 2026-03-02-02" in gen.stdout

    bat = expo("batch", "--from", "2026-03-02T00", "--to", "2026-03-02T01", env=env)
    assert bat.returncode == 0, bat.stderr
    assert "[1/3] 2026-03-02T00 ingested" in bat.stdout
    assert "metrics of 2026-03-02T01" in bat.stdout

    out = expo(
        "metrics", "--layer", "batch", "--experiment", "checkout-button", "--format", "csv", env=env
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert out.stdout.splitlines()[0] == "metric,experiment,variant,population,hour,value"
    assert {r["hour"] for r in rows} == {"2026-03-02T00:00:00Z", "2026-03-02T01:00:00Z"}
    assert {r["experiment"] for r in rows} == {"checkout-button"}
    keys = [(r["metric"], r["experiment"], r["variant"], r["population"], r["hour"]) for r in rows]
    assert keys == sorted(keys)
    visits = [float(r["value"]) for r in rows if r["metric"] == "visits"]
    assert visits and all(v > 0 for v in visits)

    quality = expo("quality", "--format", "csv", env=env)
    assert quality.returncode == 0, quality.stderr
    qrows = list(csv.DictReader(io.StringIO(quality.stdout)))
    assert quality.stdout.splitlines()[0] == "metric,hour,value"
    by = {(r["metric"], r["hour"]): int(r["value"]) for r in qrows}
    for hour in ("2026-03-02T00:00:00Z", "2026-03-02T01:00:00Z", "2026-03-02T02:00:00Z"):
        parts = (
            by[("beacons_valid", hour)]
            + by[("beacons_duplicate", hour)]
            + sum(v for (m, h), v in by.items() if h == hour and m.startswith("beacons_rejected_"))
        )
        assert by[("beacons_total", hour)] == parts > 0

    js = expo(
        "metrics", "--format", "json", "--from", "2026-03-02T01", "--to", "2026-03-02T01", env=env
    )
    points = json.loads(js.stdout)
    assert points and {p["hour"] for p in points} == {"2026-03-02T01:00:00Z"}
