"""The Spark Connect server: one long-lived, warm Spark for the batch layer's runs.

`make up` starts it on loopback with the platform's Spark settings, the Hive metastore
included (Derby admits one process: with the server up, the server is that process). Dagster's
runs and `expo batch` then connect to it as thin clients (EXPO_SPARK_REMOTE=sc://host:port)
instead of each starting a JVM, a Hive client and a cold JIT of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.ops import processes, spark_cluster
from expo_platform.settings import LOOPBACK, Settings

CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
CONNECT_APP_NAME = "expo-connect"


def remote_url(port: int, host: str = LOOPBACK) -> str:
    """The `sc://` address clients give as EXPO_SPARK_REMOTE."""
    return f"sc://{host}:{port}"


def server_config(settings: Settings, port: int, ui_port: int) -> dict[str, str]:
    """The server's Spark settings: the platform's own (`Settings.spark_config`), gRPC and
    the UI on loopback, and the UI on a port of its own (the stream's is taken)."""
    conf = settings.spark_config()
    conf.update(
        {
            "spark.app.name": CONNECT_APP_NAME,
            "spark.connect.grpc.binding.address": LOOPBACK,
            "spark.connect.grpc.binding.port": str(port),
            "spark.ui.port": str(ui_port),
            "spark.log.level": "WARN",  # not a line per client operation in its log
        }
    )
    conf.update(settings.spark.conf)
    return conf


def server_argv(settings: Settings, port: int, ui_port: int) -> list[str]:
    """`spark-submit --class SparkConnectServer` with the server's settings."""
    argv = [str(spark_cluster.spark_home() / "bin" / "spark-submit"), "--class", CONNECT_CLASS]
    argv += ["--name", CONNECT_APP_NAME]
    for key, value in server_config(settings, port, ui_port).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, "spark-internal"]


def _accepts(address: str, timeout: float) -> bool:
    """The probe of `processes.start_process`: the gRPC port accepts connections."""
    return processes.port_in_use(*processes.parse_address(address, 0))


def start_connect(settings: Settings, timeout: float = 180.0) -> processes.Service:
    """Start the server on 127.0.0.1:`settings.local.connect_port`, recorded in the services
    folder; ready when its gRPC port accepts connections (after its SparkContext is up)."""
    port, ui_port = settings.local.connect_port, settings.local.connect_ui_port
    if processes.port_in_use(LOOPBACK, ui_port):
        # Spark would move its UI to the next port: the supervisor would ask someone else.
        raise ExpoError(f"cannot start {processes.CONNECT}: {LOOPBACK}:{ui_port} is in use")
    settings.lake.metastore_dir.mkdir(parents=True, exist_ok=True)
    env = {**spark_cluster.spark_env(), "PYSPARK_PYTHON": sys.executable}
    return processes.start_process(
        processes.CONNECT,
        settings.local.services_dir,
        server_argv(settings, port, ui_port),
        port=port,
        env=env,
        cwd=Path(settings.lake.root),
        timeout=timeout,
        probe=_accepts,
        execs=True,
    )
