"""A real PostgreSQL server for the tests, from Debian's package, on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "PostgreSQL binaries not found: `make test` installs Debian's postgresql package"


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not found:
        pytest.fail(INSTALL_HINT)
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as the `postgres` system user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory, on a free loopback port:
    started, stopped (`pg_ctl stop -m immediate` for a crash) and started again on the same
    port and data, as a test needs."""

    def __init__(self) -> None:
        self.bin_dir = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="expo-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.log = self.root / "server.log"
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self.port = _free_port()
        subprocess.run(
            _as_server_user(
                [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "expo"]
                + ["--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", "expo", "expo"],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of database `expo`."""
        return f"postgresql+psycopg://expo@127.0.0.1:{self.port}/expo"

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(_as_server_user(argv), capture_output=True, text=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = self._pg_ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        if started.returncode != 0:
            server_log = self.log.read_text() if self.log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{server_log}")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`: `immediate` ends every server process at once, as a crash
        does (the next start recovers from the write-ahead log)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session; yield a SQLAlchemy URL of database `expo`."""
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, for a test that stops and restarts it."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()
