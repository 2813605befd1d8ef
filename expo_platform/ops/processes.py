"""Detached local processes: the `Service` record, its pid files, start, readiness and stop.

Each service runs detached from its starter, on a loopback port, with its log, pid file and
descriptor (`<name>.log`, `<name>.pid`, `<name>.json`) in one folder. Stopping goes by the
recorded pid only, after checking that the pid still runs the recorded command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.ops.readiness import (
    _broker_ready,
    _http_ready,
    _runs,
    _spark_ui_ready,
    _zookeeper_ready,
)

# One logger for every local service, whichever module starts it.
log = logging.getLogger("expo_platform.ops.services")

ZOOKEEPER = "zookeeper"
BROKER = "broker"
SERVICE_NAMES = (ZOOKEEPER, BROKER)
STREAM = "stream"  # the streaming app, ready when its Spark UI answers
GENERATOR = "generator"  # live traffic; no port
DAGSTER = "dagster"  # dagster dev: webserver and daemon
CONNECT = "connect"  # the Spark Connect server of the batch layer (ops/connect.py)
DASHBOARD = "dashboard"  # the experimenters' dashboard (serving/dashboard.py)
# Everything `make up` may start, in start order; `make down` stops it in reverse.
PLATFORM_NAMES = (ZOOKEEPER, BROKER, STREAM, GENERATOR, CONNECT, DAGSTER, DASHBOARD)
# SIGTERM lets the streaming app finish its micro-batch: give it time.
STOP_TIMEOUTS = {STREAM: 180.0, DAGSTER: 60.0, CONNECT: 60.0}


@dataclass
class Service:
    """A running local service: its process, address and files."""

    name: str
    pid: int
    host: str
    port: int
    argv: list[str]
    log_file: Path
    pid_file: Path
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    # spark-submit: SIGTERM goes to the JVM's children (the Python driver) first.
    children_first: bool = False

    @property
    def address(self) -> str:
        """`host:port` as clients use it."""
        return f"{self.host}:{self.port}"

    @property
    def descriptor_file(self) -> Path:
        """The JSON file beside the pid file that records the command line and address."""
        return self.pid_file.with_suffix(".json")

    def alive(self) -> bool:
        """True while the recorded pid runs the recorded command (not a zombie)."""
        if self.process is not None:
            return self.process.poll() is None
        return pid_runs(self.pid, self.argv)

    def wait_ready(
        self, timeout: float = 30.0, probe: Callable[[str, float], bool] | None = None
    ) -> None:
        """Block until clients can use the service (`probe(address, timeout)`, by default
        the one of its kind); raise ExpoError with the log tail if not."""
        probes = {ZOOKEEPER: _zookeeper_ready, BROKER: _broker_ready, STREAM: _spark_ui_ready}
        if probe is None:
            probe = probes.get(self.name, _http_ready) if self.port else _runs
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ExpoError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if probe(self.address, min(2.0, max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        raise ExpoError(
            f"{self.name} not ready on {self.address} in {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout` seconds; remove the pid files. True if it ran."""
        was_alive = self.alive()
        if was_alive:
            self.resume()  # a stopped (paused) process would not act on SIGTERM
            # On SIGTERM spark-submit's JVM would stop the SparkContext under the running
            # micro-batch; its Python driver finishes the batch, and the JVM exits with it.
            children = self.children_first and self._signal_children(signal.SIGTERM)
            if children and not self._wait_gone(timeout):
                timeout = 10.0
            if self.alive():
                self._signal(signal.SIGTERM)
            if not self._wait_gone(timeout):
                log.warning(
                    "service ignored SIGTERM", extra={"service": self.name, "pid": self.pid}
                )
                if self.children_first:
                    self._signal_children(signal.SIGKILL)
                self._signal(signal.SIGKILL)
                self._wait_gone(5.0)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)
        for path in (self.pid_file, self.descriptor_file):
            path.unlink(missing_ok=True)
        log.info(
            "service stopped",
            extra={"service": self.name, "pid": self.pid, "was_running": was_alive},
        )
        return was_alive

    def pause(self) -> None:
        """Freeze the process (SIGSTOP), to test clients against an unresponsive service."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the service's log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self) -> str:
        """One line for people: name, address, pid, log file."""
        return f"{self.name} {self.address} pid={self.pid} log={self.log_file}"

    def _signal(self, signum: int) -> None:
        # Only a process that still runs our command gets a signal: pids are reused.
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _signal_children(self, signum: int) -> bool:
        """Signal the live children of the process; False when it has none."""
        children = child_pids(self.pid) if self.alive() else []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)
        return bool(children)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


def pid_runs(pid: int, argv: Sequence[str]) -> bool:
    """True when `pid` is a live (non-zombie) process whose command line is exactly `argv`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return cmdline.split(b"\0")[:-1] == [a.encode() for a in argv]


def pid_alive(pid: int) -> bool:
    """True when `pid` is a live process of this machine (a zombie is dead: it has ended and
    waits only for its parent to collect its exit status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is `pid`."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat_file.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue  # ended meanwhile
        if int(after_name[1]) == pid and after_name[0] not in ("Z", "X"):
            children.append(int(stat_file.parent.name))
    return children


def command_line(pid: int) -> list[str]:
    """The command line that /proc shows for `pid`."""
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start_process(
    name: str,
    folder: Path,
    argv: list[str],
    *,
    port: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
    probe: Callable[[str, float], bool] | None = None,
    execs: bool = False,
    children_first: bool = False,
) -> Service:
    """Start a platform process detached, recorded by pid files in `folder`; wait until
    it is ready (`probe`, else its HTTP port answers, or, without a port, it runs).

    `execs`: the command replaces itself (Spark's scripts exec java), so the command line
    recorded for the pid checks is the one it runs once ready. `children_first`: stopping
    sends SIGTERM to its children first (see `Service.stop`).
    """
    return _start(
        name,
        Path(folder),
        "127.0.0.1",
        port,
        argv,
        timeout,
        env,
        cwd,
        probe=probe,
        execs=execs,
        children_first=children_first,
    )


def _start(
    name: str,
    folder: Path,
    host: str,
    port: int,
    argv: list[str],
    timeout: float,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
    *,
    probe: Callable[[str, float], bool] | None = None,
    execs: bool = False,
    children_first: bool = False,
) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    if port and port_in_use(host, port):
        raise ExpoError(f"cannot start {name}: {host}:{port} is already in use")
    log_file = folder / f"{name}.log"
    env = dict(os.environ)
    # Tansu reads its settings from these too; the command line must be the only source.
    for key in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
        env.pop(key, None)
    env.update(extra_env or {})
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or folder,
            env=env,
            # Own session: Ctrl-C in the starter's terminal does not reach the service.
            start_new_session=True,
        )
    service = Service(
        name,
        process.pid,
        host,
        port,
        argv,
        log_file,
        folder / f"{name}.pid",
        process,
        children_first=children_first,
    )
    _write_pidfiles(service)
    try:
        service.wait_ready(timeout, probe)
        if execs:
            service.argv = command_line(service.pid) or argv
            _write_pidfiles(service)
    except ExpoError:
        service.stop(timeout=5.0)
        raise
    log.info(
        "service started",
        extra={
            "service": name,
            "address": service.address,
            "pid": service.pid,
            "log": str(log_file),
        },
    )
    return service


def _write_pidfiles(service: Service) -> None:
    service.pid_file.write_text(f"{service.pid}\n")
    descriptor = {
        "name": service.name,
        "pid": service.pid,
        "host": service.host,
        "port": service.port,
        "argv": service.argv,
        "log_file": str(service.log_file),
        "children_first": service.children_first,
    }
    service.descriptor_file.write_text(json.dumps(descriptor, indent=2) + "\n")


def recorded_service(folder: Path, name: str) -> Service | None:
    """The service recorded in `folder` by its pid files, or None when there is no record."""
    pid_file = Path(folder) / f"{name}.pid"
    descriptor_file = pid_file.with_suffix(".json")
    try:
        pid = int(pid_file.read_text().strip())
        descriptor = json.loads(descriptor_file.read_text())
    except (OSError, ValueError):
        return None
    return Service(
        name,
        pid,
        descriptor["host"],
        int(descriptor["port"]),
        list(descriptor["argv"]),
        Path(descriptor["log_file"]),
        pid_file,
        children_first=bool(descriptor.get("children_first", False)),
    )


def running_services(folder: Path) -> list[Service]:
    """The recorded services of `folder` that still run their recorded command."""
    found = (recorded_service(folder, name) for name in PLATFORM_NAMES)
    return [s for s in found if s is not None and s.alive()]


def stop_from_pidfiles(
    folder: Path, timeout: float = 10.0, names: Sequence[str] = SERVICE_NAMES
) -> list[Service]:
    """Stop exactly the processes recorded in `folder`; return the ones that were running.

    A pid whose command line is no longer the recorded one (the process ended and the pid
    was reused) is left alone and its stale pid files are removed.
    """
    stopped = []
    # Last started, first stopped: the broker before ZooKeeper, the app before the broker.
    for name in reversed(names):
        service = recorded_service(folder, name)
        if service is None:
            continue
        if service.stop(STOP_TIMEOUTS.get(name, timeout)):
            stopped.append(service)
    return stopped


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """`host:port` of the first server in a list such as `a:1,b:2/chroot`."""
    first = text.split(",")[0].split("/")[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first, default_port
    try:
        return host, int(port)
    except ValueError:
        raise ExpoError(f"not a host:port address: {text!r}") from None
