"""Local ZooKeeper, Kafka-compatible broker (Tansu) and Spark standalone cluster for
development and tests.

Each service runs detached from its starter, on a loopback port, with its log, pid file and
descriptor (`<name>.log`, `<name>.pid`, `<name>.json`) in one folder. Stopping goes by the
recorded pid only, after checking that the pid still runs the recorded command line.

This module is their command line; the services themselves live in `ops.processes` (the
`Service` record, pid files, start and stop), `ops.readiness` (the probes),
`ops.zookeeper_broker` and `ops.spark_cluster`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from expo_platform.errors import ExpoError
from expo_platform.ops.processes import (
    SERVICE_NAMES,
    parse_address,
    running_services,
    stop_from_pidfiles,
)
from expo_platform.ops.spark_cluster import CLUSTER_NAMES, cluster_up, master_url
from expo_platform.ops.zookeeper_broker import DEFAULT_PARTITIONS, services_up

LOCAL_HOSTS = ("127.0.0.1", "localhost")


# -- command line ---------------------------------------------------------------------------


def _local(name: str, host: str) -> None:
    if host not in LOCAL_HOSTS:
        raise ExpoError(f"{name} address {host!r} is not local: start it where it runs")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m expo_platform.ops.services up|down|status|cluster-up|cluster-down`, addresses
    from the settings."""
    from expo_platform.logs import run_command
    from expo_platform.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m expo_platform.ops.services",
        description="Local ZooKeeper and Kafka broker; a Spark standalone master and worker.",
    )
    parser.add_argument("command", choices=("up", "down", "status", "cluster-up", "cluster-down"))
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions of the beacons topic when it is created",
    )
    args = parser.parse_args(argv)

    def action(settings: Settings) -> int:
        folder = settings.local.services_dir
        zk_host, zk_port = parse_address(settings.stream.zookeeper, 2181)
        kafka_host, kafka_port = parse_address(settings.stream.kafka_bootstrap, 9092)
        if args.command == "up":
            _local("ZooKeeper", zk_host)
            _local("Kafka", kafka_host)
            services_up(
                folder, zk_port, kafka_port, settings.stream.kafka_topic, args.partitions, print
            )
        elif args.command == "cluster-up":
            port = settings.local.cluster_master_port
            cluster_up(
                folder,
                port,
                settings.local.cluster_ui_port,
                settings.local.cluster_worker_cores,
                settings.local.cluster_worker_memory,
                print,
            )
            print(
                f"use it with: EXPO_SPARK_MASTER={master_url(port)} "
                f"EXPO_SPARK_MASTER_UI=127.0.0.1:{settings.local.cluster_ui_port} "
                "EXPO_STREAM_LAUNCHER=spark-submit"
            )
        elif args.command in ("down", "cluster-down"):
            names = CLUSTER_NAMES if args.command == "cluster-down" else SERVICE_NAMES
            stopped = stop_from_pidfiles(folder, names=names)
            for service in stopped:
                print(f"{service.name} pid={service.pid} stopped")
            if not stopped:
                print(f"nothing running from {folder}")
        else:
            running = {s.name: s for s in running_services(folder)}
            for name in SERVICE_NAMES:
                service = running.get(name)
                print(service.describe() if service else f"{name} not running")
            return 0 if all(name in running for name in SERVICE_NAMES) else 1
        return 0

    return run_command("services", action)


if __name__ == "__main__":
    sys.exit(main())
