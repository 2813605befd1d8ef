"""A full lake disk: `expo batch` on a lake in a small tmpfs stops with one clear error that
names the lake's path, leaves no partial partition, and a run after space is freed equals
the oracle."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from expo_platform import lake
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig, write_landing
from tests.helpers import assert_store_equals_oracle, expo_batch, lake_settings
from tests.test_batch_faults import _partitions_are_whole

FIRST = LAST = parse_hour("2026-03-02T00")
CONFIG = GeneratorConfig(start=FIRST, hours=2, visitors=300, seed=47, dirty_fraction=0.02)
FREE_BYTES = 64 * 1024  # what the filler leaves: less than the first partition needs


@contextlib.contextmanager
def small_disk(folder, size: str = "32m"):
    """A tmpfs of `size` mounted at `folder` (the tests run as root, as CI does)."""
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder, leave: int) -> None:
    """Fill the file system of `folder` but for `leave` bytes."""
    import shutil

    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as out:
        out.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = free - leave
        while left > 0:
            left -= out.write(chunk[: min(len(chunk), left)])


@pytest.mark.slow
def test_a_full_lake_disk_gives_a_clear_error_and_a_rerun_after_freeing_equals_the_oracle(
    tmp_path,
):
    with small_disk(tmp_path / "lake") as root:
        settings = lake_settings(root, tmp_path / "dagster", tmp_path / "metrics.sqlite")
        settings = settings.replace(
            spark={"conf": {"spark.sql.shuffle.partitions": "2"}}, batch={"max_reject_rate": 0.5}
        )
        write_landing(CONFIG, settings.lake.landing_dir, progress=lambda *_: None)
        _fill(root, FREE_BYTES)
        done = expo_batch(settings, FIRST, LAST)
        assert done.returncode != 0
        # The last line, the one a person reads, says what happened, where, and what to do.
        last_line = done.stderr.strip().splitlines()[-1]
        assert last_line.startswith("expo: error: hourly_ingest of 2026-03-02T00 failed")
        assert "no space left on device writing " + str(root / "tables") in last_line
        assert f"the file system of the lake {root} has" in last_line
        _partitions_are_whole(settings)
        assert not any((root / lake.STAGING).glob("*")), "a staging folder was left behind"
        (root / "filler").unlink()
        done = expo_batch(settings, FIRST, LAST)
        assert done.returncode == 0, done.stderr[-3000:]
        _partitions_are_whole(settings)
        assert_store_equals_oracle(settings, FIRST, LAST)
