"""`dagster dev -w workspace.yaml` for real, driven by Chromium: the asset graph shows every
asset, and a backfill of two hours launched from the UI completes. Screenshots are artifacts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig, write_landing
from expo_platform.ops.dagster_home import ensure_dagster_home
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings
from tests.helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PROJECT

ASSETS = ["beacons", "beacon_rejects", "data_quality", "sessions", "experiment_metrics"]
DAILY_ASSETS = ["visitor_daily", "visitor_totals", "experiment_scorecards", "trend_reports"]
# The speed layer's external assets: the stream writes them, Dagster only observes them.
SPEED_ASSETS = ["kafka_beacons", "landing_zone", "speed_metrics"]
HOURS = ["2026-03-02-00", "2026-03-02-01"]
# Wide enough that the expanded graph fits at a scale >= 0.6, where Dagster draws full asset
# nodes with whole names (below it draws minimal nodes whose long names are cut in the middle).
VIEWPORT = {"width": 2560, "height": 1280}
UI_TIMEOUT_MS = 60_000  # generous: the 2 cores are shared with Spark runs and other work
PNG = b"\x89PNG\r\n\x1a\n"
BACKFILLS = """{ partitionBackfillsOrError { ... on PartitionBackfills { results {
  id assetSelection { path }
  assetBackfillData { rootTargetedPartitions { partitionKeys ranges { start end } } } } } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } }
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime } } } }"""
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DagsterDev:
    port: int
    lake: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return f"--- tail of {self.log} ---\n{self.log.read_text(errors='replace')[-chars:]}"


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` on a free port over a lake with two generated hours."""
    lake, home = tmp_path / "lake", tmp_path / "dagster_home"
    write_landing(
        GeneratorConfig(start=parse_hour("2026-03-02T00"), hours=2, visitors=150, seed=5),
        lake / "landing" / "beacons",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    # The hourly schedule stays off: at minute 10 of an hour it would queue today's hours ahead
    # of the backfill, and the test would depend on the time of day.
    env.update(
        EXPO_LAKE=str(lake),
        DAGSTER_HOME=str(home),
        EXPO_HOURLY_SCHEDULE="stopped",
        PYSPARK_PYTHON=sys.executable,
    )
    # The way `make`, `expo` and `expo_platform.ops.local` prepare it: dagster.yaml and pool limits.
    ensure_dagster_home(load_settings(env), PROJECT)
    port = free_port()
    log_path = tmp_path / "dagster-dev.log"
    log = log_path.open("w")
    dagster = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dev = DagsterDev(port, lake, log_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                graphql(port, "{ version }")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"dagster dev did not start:\n{dev.log_tail()}")
                time.sleep(1)
        yield dev
    finally:
        # SIGTERM to `dagster dev` alone, as Ctrl-C: it tells the webserver and the daemon to
        # shut down and waits for them, up to 60 s each. Alone that takes about 2 s; beside
        # other tests, the whole 60 s. The lake is the test's own: what still runs after 15 s
        # is killed.
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        process.wait(timeout=30)
        log.close()


def new_page(browser: Browser) -> Page:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    # On localhost Dagster greets a new browser with a "Join the Dagster community" dialog over
    # the page; the flag it stores once dismissed is set up front, and a handler skips the
    # dialog should a later Dagster rename that flag.
    context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
    page = context.new_page()
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip", exact=True).click(),
    )
    return page


@contextlib.contextmanager
def ui_step(page: Page, dev: DagsterDev, step: str):
    """Turns a failed UI step into a failure with a screenshot and the dagster-dev log."""
    try:
        yield
    except (PlaywrightError, AssertionError) as exc:
        shot = ARTIFACTS / "dagster_ui_failure.png"
        with contextlib.suppress(PlaywrightError):
            page.screenshot(path=str(shot), full_page=True)
        pytest.fail(
            f"UI step {step!r} failed at {page.url}: {exc}\nscreenshot: {shot}\n{dev.log_tail()}"
        )


def asset_graph(page: Page):
    """The rendered lineage graph: the SVG whose nodes are HTML in <foreignObject>s."""
    return page.locator("svg").filter(has=page.locator("foreignObject"))


def show_every_asset(page: Page, dev: DagsterDev, shot: Path) -> None:
    page.goto(f"{dev.url}/asset-groups")
    # The groups (batch, analysis, speed) start collapsed into group nodes: expand them from the
    # graph's settings menu (the navigation's button is named "settings Settings").
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    graph = asset_graph(page)
    for name in ASSETS + DAILY_ASSETS + SPEED_ASSETS:
        expect(graph.get_by_text(name, exact=True), f"node {name} in the graph").to_be_visible()
    page.screenshot(path=str(shot), full_page=True)


def launch_backfill(page: Page) -> str:
    """Filters the graph to the hourly (batch) assets, backfills HOURS; returns the id."""
    search = page.get_by_role("textbox", name="Search and filter assets")
    search.focus()  # a CodeMirror editor: its textarea sits under the editor's lines
    page.keyboard.type("group:batch")
    page.keyboard.press("Enter")
    graph = asset_graph(page)
    for name in ASSETS:
        expect(graph.get_by_text(name, exact=True), f"node {name} in the graph").to_be_visible()
    for name in DAILY_ASSETS:
        expect(graph.get_by_text(name, exact=True), f"no {name} in the graph").to_have_count(0)

    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(ASSETS)} assets")
    # The dialog offers the last 90 days at first; March 2026 is older than that.
    dialog.get_by_role("button", name="Show all partitions").click()
    keys = dialog.get_by_role("textbox")
    keys.fill(", ".join(HOURS))
    keys.press("Enter")
    expect(dialog.get_by_text(f"{len(HOURS)} partitions", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch backfill")
    expect(launch).to_be_enabled()
    launch.click()
    # A toast "Created backfill <id>" shows for a few seconds; text_content waits for it.
    toast = page.get_by_role("region", name=re.compile("Notifications")).get_by_text(
        re.compile(r"Created backfill \w+")
    )
    created = toast.text_content()
    match = re.search(r"Created backfill (\w+)", created or "")
    assert match, f"no backfill id in the toast {created!r}"
    return match.group(1)


def wait_for_backfill(page: Page, dev: DagsterDev, backfill_id: str) -> tuple[str, list[dict]]:
    """Waits (over GraphQL) for the backfill and its runs to be terminal."""
    deadline = time.monotonic() + 600
    while True:
        status = graphql(dev.port, STATUS, {"id": backfill_id})
        backfill = status["partitionBackfillOrError"]["status"]
        runs = status["runsOrError"]["results"]
        done = backfill in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "COMPLETED_FAILED")
        if done and all(r["status"] in TERMINAL_RUN for r in runs):
            return backfill, runs
        if time.monotonic() > deadline:
            with ui_step(page, dev, "the unfinished backfill page"):
                page.goto(f"{dev.url}/runs/b/{backfill_id}")
                raise AssertionError(f"backfill {backfill_id} still {backfill} after 600 s")
        time.sleep(3)


def assert_one_spark_run_at_a_time(runs: list[dict]) -> None:
    """Pool "spark" admits one run: the backfill's runs, all queued at once on a fresh instance,
    must not overlap (the Derby metastore admits one process)."""
    spans = sorted((r["startTime"], r["endTime"], r["runId"]) for r in runs)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"run {second} started {end - start:.1f} s before {first} ended"


@pytest.mark.slow
def test_asset_graph_and_a_two_hour_backfill_in_chromium(dagster_dev):
    dev = dagster_dev
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make system`")
    # Also makes sure the code location is loaded before the browser looks.
    nodes = graphql(dev.port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    names = sorted(n["assetKey"]["path"][0] for n in nodes)
    assert names == sorted(ASSETS + DAILY_ASSETS + SPEED_ASSETS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"dagster_{name}.png" for name in ("asset_graph", "backfill")}
    for stale in [*shots.values(), ARTIFACTS / "dagster_ui_failure.png"]:
        stale.unlink(missing_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = new_page(browser)
            started = time.monotonic()
            with ui_step(page, dev, "every asset in the graph"):
                show_every_asset(page, dev, shots["asset_graph"])
            with ui_step(page, dev, "launch a backfill of two hours"):
                backfill_id = launch_backfill(page)
            print(
                f"UI: graph checked, {backfill_id} launched in {time.monotonic() - started:.0f} s"
            )
            page.goto("about:blank")  # no live polling of the webserver while Spark runs

            backfills = graphql(dev.port, BACKFILLS)["partitionBackfillsOrError"]["results"]
            assert [b["id"] for b in backfills] == [backfill_id], backfills
            (launched,) = backfills
            assert sorted(a["path"][0] for a in launched["assetSelection"]) == sorted(ASSETS)
            targeted = launched["assetBackfillData"]["rootTargetedPartitions"]
            assert targeted["partitionKeys"] == HOURS or targeted["ranges"] == [
                {"start": HOURS[0], "end": HOURS[1]}
            ], targeted

            started = time.monotonic()
            backfill, run_records = wait_for_backfill(page, dev, backfill_id)
            runs = [r["status"] for r in run_records]
            print(f"backfill {backfill} in {time.monotonic() - started:.0f} s, runs {runs}")
            page.set_viewport_size({"width": 1600, "height": 900})  # a table, not a wide graph
            with ui_step(page, dev, "the finished backfill page"):
                page.goto(f"{dev.url}/runs/b/{backfill_id}")
                selection = re.compile(rf"{HOURS[0]}(\.\.\.|…){HOURS[1]}")
                expect(page.get_by_text(selection)).to_be_visible()
                expect(page.get_by_text(re.compile(r"\d+% completed"))).to_have_count(len(ASSETS))
                page.screenshot(path=str(shots["backfill"]), full_page=True)
            assert backfill in ("COMPLETED", "COMPLETED_SUCCESS"), f"{runs}\n{dev.log_tail()}"
            assert runs and all(r == "SUCCESS" for r in runs), f"{runs}\n{dev.log_tail()}"
            assert_one_spark_run_at_a_time(run_records)
            with ui_step(page, dev, "the backfill page shows success"):
                expect(page.locator("body")).to_contain_text(re.compile(r"Status\s*Succeeded"))
                expect(page.get_by_text("100% completed")).to_have_count(len(ASSETS))
        finally:
            browser.close()

    for shot in shots.values():
        assert shot.exists() and shot.read_bytes()[:8] == PNG, f"no PNG at {shot}"
        assert shot.stat().st_size > 20_000, f"{shot} is only {shot.stat().st_size} bytes"
        print(f"screenshot: {shot} ({shot.stat().st_size} bytes)")

    with MetricStore(f"sqlite:///{dev.lake / 'metrics.sqlite'}") as store:
        hours = {p.hour for p in store.query(layer="batch")}
        quality = {p.hour for p in store.query(layer="batch", quality=True)}
    assert hours == {"2026-03-02T00:00:00Z", "2026-03-02T01:00:00Z"}
    assert quality == hours


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
REEXECUTE = """mutation($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def _run_status(dev: DagsterDev, run_id: str) -> str:
    return graphql(dev.port, RUN, {"id": run_id})["runOrError"]["status"]


def _wait_status(dev: DagsterDev, run_id: str, wanted: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (status := _run_status(dev, run_id)) not in wanted:
        assert time.monotonic() < deadline, f"run {run_id} still {status}\n{dev.log_tail()}"
        time.sleep(1)
    return status


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (the run worker and its Spark JVM)."""
    import psutil

    root = psutil.Process(pid)
    for process in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


@pytest.mark.slow
def test_a_killed_run_worker_fails_its_run_and_a_reexecution_gives_a_clean_runs_lake(
    dagster_dev, monkeypatch
):
    """kill -9 of a run worker (and its JVM) in the middle of an hourly_ingest run: the
    `dead_run_workers` sensor marks the run failed (the default launcher cannot tell, and the
    run would hold the `spark` pool's one slot for good), a re-execution through GraphQL, as
    the UI's Re-execute button sends it, succeeds, and the hour's lake partitions and quality
    counts are those of the oracle (a clean run)."""
    from dagster import DagsterInstance

    from expo_platform import lake
    from tests import reference
    from tests.test_batch_faults import _partitions_are_whole

    dev, hour = dagster_dev, HOURS[0]
    selector = {"repositoryLocationName": "expo", "repositoryName": "__repository__"}
    params = {
        "selector": {**selector, "jobName": "hourly_ingest"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": hour}]},
    }
    launched = graphql(dev.port, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    monkeypatch.setenv("DAGSTER_HOME", str(dev.lake.parent / "dagster_home"))
    settings = load_settings(
        {"EXPO_LAKE": str(dev.lake), "DAGSTER_HOME": str(dev.lake.parent / "dagster_home")}
    )
    staging, beacons = dev.lake / lake.STAGING, lake.BEACONS.root(settings)
    with DagsterInstance.get() as instance:
        from sensors.run_watchdog import worker_pid

        deadline = time.monotonic() + 300
        # Mid-run: the worker is writing the hour's first table.
        while not any(staging.glob("*")) and not beacons.exists():
            assert time.monotonic() < deadline, f"no write within 300 s\n{dev.log_tail()}"
            time.sleep(0.05)
        pid = worker_pid(instance, run_id)
        assert pid is not None, "the run worker reported no pid"
        _kill_tree(pid)
    assert _wait_status(dev, run_id, {"FAILURE", "SUCCESS"}, 120) == "FAILURE"
    _partitions_are_whole(settings)

    again = graphql(
        dev.port, REEXECUTE, {"params": {"parentRunId": run_id, "strategy": "ALL_STEPS"}}
    )["launchRunReexecution"]
    assert again["__typename"] == "LaunchRunSuccess", again
    retry_id = again["run"]["runId"]
    assert _wait_status(dev, retry_id, {"FAILURE", "SUCCESS"}, 600) == "SUCCESS", dev.log_tail()

    _partitions_are_whole(settings)
    index = reference.hour_of_key(hour)
    lines = reference.classify(dev.lake / "landing" / "beacons")
    want = sorted(x.beacon["event_id"] for x in lines if x.hour == index and x.status == "valid")
    partition = lake.BEACONS.partition_path(settings, parse_hour(hour))
    assert sorted(pq.read_table(partition).column("event_id").to_pylist()) == want
    expected = reference.quality(dev.lake / "landing" / "beacons")[reference.iso_of_hour(index)]
    with MetricStore(f"sqlite:///{dev.lake / 'metrics.sqlite'}") as store:
        got = store.values(layer="batch", quality=True)
    assert {k[0]: v for k, v in got.items() if k[4] == reference.iso_of_hour(index)} == {
        k: float(v) for k, v in expected.items()
    }
