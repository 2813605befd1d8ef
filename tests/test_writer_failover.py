"""Writer fail-over between two regions of the speed layer: two `expo stream` apps read the
same topic; only the holder of the ZooKeeper writer lease writes. The store and landing zone
must equal those of the uninterrupted reference run of `test_stream_faults` (same traffic)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.fixtures_services import kafka, zookeeper  # noqa: F401
from tests.test_stream_faults import (  # noqa: F401 (fixtures)
    LEASE_SECONDS,
    RUN_TIMEOUT,
    App,
    Run,
    assert_same_store,
    quarantined,
    reference,
    topic,
    topic_ends,
    traffic,
    wait_until,
)


def expo_writer(app: App, *args: str) -> str:
    env = app.env()
    done = subprocess.run(
        [sys.executable, "-m", "expo_platform.cli", "writer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def writer_of(app: App) -> str:
    """The region holding the writer lease, from `expo writer status`."""
    status = expo_writer(app, "status")
    return re.search(r"writing (\S+),", status)[1]


def written_batches(run: Run) -> int:
    """Micro-batches the run finished as the writer (a standby's are marked)."""
    return len(re.findall(r"done in [\d.]+s:", run.log()))


@pytest.mark.slow
def test_writer_fail_over_between_two_regions(
    kafka,  # noqa: F811
    zookeeper,  # noqa: F811
    topic,  # noqa: F811
    reference,  # noqa: F811
    tmp_path,
):
    """Region a writes; `expo writer switch --to b` moves the writes to b; b is killed and a
    takes the lease back once b's expires. The store and landing zone equal the reference's:
    no hour missing, nothing counted twice; each region's state saw every message."""
    small = 300  # more, smaller micro-batches than the reference: time to switch and kill
    a = App(kafka, zookeeper, topic, tmp_path, region="a", max_offsets=small)
    b = App(kafka, zookeeper, topic, tmp_path, region="b", max_offsets=small)
    with a, b:
        run_a = a.start()
        wait_until(lambda: writer_of(a) == "a", RUN_TIMEOUT, "region a writing", run_a)
        run_b = b.start()
        run_b.wait_for_log(r"batch 0000-00000001 done in [\d.]+s \(standby\)")
        assert "(standby)" not in run_a.log(), run_a.tail()
        assert written_batches(run_b) == 0

        out = expo_writer(a, "switch", "--to", "b")
        assert "preferred writer" in out and ": b " in out, out
        wait_until(lambda: writer_of(a) == "b", 60, "region b writing", run_b)
        run_a.wait_for_log("writes handed over to region b", timeout=30)
        # b writes a micro-batch of its own, then dies holding the lease.
        wait_until(lambda: written_batches(run_b) > 0, RUN_TIMEOUT, "a batch written by b", run_b)
        assert "took over the writes" in run_b.log()
        assert a.committed() != topic_ends(kafka, topic), "the traffic ended before the kill"
        run_b.kill9()
        killed = time.monotonic()
        wait_until(lambda: writer_of(a) == "a", 60, "region a writing again", run_a)
        taken_after = time.monotonic() - killed
        # The lease outlives its dead holder by the session timeout, not much longer. The
        # session's clock runs from b's last heartbeat (every third of the timeout), not from
        # the kill: it can expire up to a third of the timeout sooner (4.7 s of 6 was seen).
        assert LEASE_SECONDS * 2 / 3 - 1 <= taken_after <= LEASE_SECONDS + 20, taken_after
        wait_until(
            lambda: run_a.log().count("took over the writes") == 2, 60, "a's take-over", run_a
        )
        a.wait_caught_up(run_a)
        run_a.terminate()
        assert run_a.wait(120) == 0, run_a.tail()
        after = run_a.log().split("took over the writes")[-1]
        assert re.search(r"done in [\d.]+s:", after), "no batch written after the take-over"
        assert a.committed() == topic_ends(kafka, topic)
        # The store, the landing zone (every message once) and a's quarantine are those of
        # the uninterrupted reference run; b quarantined what it read before it died.
        assert_same_store(a, reference, same_boundaries=False)
        assert quarantined(b.stream_dir) <= reference.quarantined
