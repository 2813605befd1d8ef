"""The Dagster instance folder (DAGSTER_HOME): the project's dagster.yaml and the pool limits.

The batch assets share one Dagster pool. `dagster.yaml` gives pools a default limit of 1, but
Dagster 1.13's run queue applies a default limit only from its second pass over a new pool: on a
fresh instance, every run queued before that pass is launched at once (runs of one backfill, or
the hourly schedule catching up). Two Spark runs at once fail on the embedded Derby metastore,
which admits one process. So the limits are set explicitly, with Dagster's own command
(`dagster instance concurrency set`), before the daemon sees a run. This module runs that command
and never imports Dagster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.settings import Settings

log = logging.getLogger(__name__)

SPARK_POOL = "spark"
# The embedded Derby metastore admits one process: one Spark run at a time.
POOL_LIMITS = {SPARK_POOL: 1}
_POOLS_SET = ".expo-pool-limits.json"  # the limits last set in this instance, as JSON


def set_pool_limits(home: Path, limits: dict[str, int] = POOL_LIMITS) -> None:
    """Set each pool's run limit in the instance at `home` (idempotent, about 3 s per pool)."""
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    for pool, limit in limits.items():
        done = subprocess.run(
            [str(dagster), "instance", "concurrency", "set", pool, str(limit)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ExpoError(
                f"could not set the limit of Dagster pool {pool!r} in {home}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        log.debug("dagster pool limit set", extra={"pool": pool, "limit": limit, "home": str(home)})


def ensure_dagster_home(settings: Settings, project: Path, refresh: bool = False) -> Path:
    """The settings' Dagster instance folder, with the project's dagster.yaml in it (copied if
    missing, or always with `refresh`) and the pool limits set."""
    home = settings.local.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if refresh or not (home / "dagster.yaml").exists():
        shutil.copy(project / "dagster.yaml", home / "dagster.yaml")
    marker = home / _POOLS_SET
    wanted = json.dumps(POOL_LIMITS, sort_keys=True)
    if not marker.exists() or marker.read_text() != wanted:
        set_pool_limits(home)
        marker.write_text(wanted)
    return home


def prepare_dagster_home(settings: Settings, project: Path) -> None:
    """Point DAGSTER_HOME at the settings' folder, prepared by `ensure_dagster_home`."""
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(settings, project))
