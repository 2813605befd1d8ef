"""A local Spark standalone cluster: one master and one worker, from the pyspark wheel.

Both run as detached `Service`s (`ops.processes`) on loopback ports; the worker's work and
scratch folders live under the services folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.ops.processes import Service, _start, port_in_use, recorded_service
from expo_platform.settings import LOOPBACK

SPARK_MASTER = "spark-master"  # a standalone master, from the pyspark wheel
SPARK_WORKER = "spark-worker"  # one worker of that master
CLUSTER_NAMES = (SPARK_MASTER, SPARK_WORKER)
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """The pyspark package folder: SPARK_HOME of the wheel, with `bin/spark-class`."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ExpoError("pyspark not found: `make deps` installs it")
    home = Path(next(iter(spec.submodule_search_locations)))
    if not (home / "bin" / "spark-class").is_file():
        raise ExpoError(f"{home} has no bin/spark-class")
    return home


def spark_env() -> dict[str, str]:
    """The environment of Spark's launch scripts: SPARK_HOME, and Java must be found."""
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        raise ExpoError("java not found: `make system` installs Java")
    return {
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", LOOPBACK),  # spark.python_environment
    }


def master_url(port: int, host: str = "127.0.0.1") -> str:
    """The `spark://` URL of a standalone master."""
    return f"spark://{host}:{port}"


def master_argv(port: int, ui_port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line of a standalone master on host:port, web UI on ui_port."""
    return [
        str(spark_home() / "bin" / "spark-class"),
        MASTER_CLASS,
        "--host",
        host,
        "--port",
        str(port),
        "--webui-port",
        str(ui_port),
    ]


def worker_argv(
    master: str, cores: int, memory: str, ui_port: int, work_dir: Path, host: str = "127.0.0.1"
) -> list[str]:
    """The command line of a worker of `master` (spark://...) offering cores and memory."""
    return [
        str(spark_home() / "bin" / "spark-class"),
        WORKER_CLASS,
        "--host",
        host,
        "--cores",
        str(cores),
        "--memory",
        memory,
        "--webui-port",
        str(ui_port),
        "--work-dir",
        str(work_dir),
        master,
    ]


def master_status(ui: str, timeout: float = 5.0) -> dict | None:
    """The master's JSON (`http://<ui>/json/`: workers, activeapps, completedapps), or None
    when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{ui}/json/", timeout=timeout) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _cluster_env(local_dirs: Path | None = None) -> dict[str, str]:
    # Loopback only, like the other local services; executors inherit it from the worker.
    env = spark_env()
    if local_dirs is not None:
        local_dirs.mkdir(parents=True, exist_ok=True)
        env["SPARK_LOCAL_DIRS"] = str(local_dirs)  # shuffle and spill of the executors
    return env


def start_master(folder: Path, port: int, ui_port: int, timeout: float = 60.0) -> Service:
    """Start a standalone master on 127.0.0.1:port (web UI on ui_port); ready when its
    JSON says ALIVE."""
    if port_in_use("127.0.0.1", ui_port):
        # Spark would move its UI to the next port: the probe would ask someone else.
        raise ExpoError(f"cannot start {SPARK_MASTER}: 127.0.0.1:{ui_port} is already in use")
    ui = f"127.0.0.1:{ui_port}"

    def alive(address: str, timeout: float) -> bool:
        status = master_status(ui, timeout)
        return status is not None and status.get("status") == "ALIVE"

    argv = master_argv(port, ui_port)
    env = _cluster_env()
    return _start(
        SPARK_MASTER, Path(folder), "127.0.0.1", port, argv, timeout, env, probe=alive, execs=True
    )


def worker_alive(status: dict | None, ui_port: int) -> bool:
    """True when the master's JSON lists the worker whose web UI is on ui_port as ALIVE."""
    for worker in (status or {}).get("workers", []):
        address = str(worker.get("webuiaddress", ""))
        if address.endswith(f":{ui_port}") and worker.get("state") == "ALIVE":
            return True
    return False


def start_worker(
    folder: Path,
    master_port: int,
    master_ui_port: int,
    cores: int,
    memory: str,
    ui_port: int,
    timeout: float = 60.0,
) -> Service:
    """Start a worker of the local master, its work and scratch folders under `folder`;
    ready when the master lists it ALIVE. Recorded with its web UI port."""
    home = Path(folder) / SPARK_WORKER
    argv = worker_argv(master_url(master_port), cores, memory, ui_port, home / "work")
    ui = f"127.0.0.1:{master_ui_port}"

    def registered(address: str, timeout: float) -> bool:
        return worker_alive(master_status(ui, timeout), ui_port)

    env = _cluster_env(home / "local")
    return _start(
        SPARK_WORKER,
        Path(folder),
        "127.0.0.1",
        ui_port,
        argv,
        timeout,
        env,
        probe=registered,
        execs=True,
    )


def cluster_up(
    folder: Path,
    port: int,
    ui_port: int,
    cores: int,
    memory: str,
    say: Callable[[str], None],
) -> list[Service]:
    """Start what is not running yet of a standalone master and one worker (its web UI on
    ui_port + 1)."""
    running = {s.name: s for s in (recorded_service(folder, n) for n in CLUSTER_NAMES) if s}
    services = []
    for name in CLUSTER_NAMES:
        service = running.get(name)
        if service is not None and service.alive():
            say(f"{service.describe()} (already running)")
        elif name == SPARK_MASTER:
            service = start_master(folder, port, ui_port)
            say(f"{service.describe()} (started, web UI http://127.0.0.1:{ui_port})")
        else:
            service = start_worker(folder, port, ui_port, cores, memory, ui_port + 1)
            say(f"{service.describe()} (started, {cores} cores, {memory})")
        services.append(service)
    return services
