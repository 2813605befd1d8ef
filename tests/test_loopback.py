"""The project's Spark listens on loopback only, and its UI cannot stop jobs.

Spark binds its driver, block manager and UI to every interface unless told otherwise; a
Spark UI with kill links then lets anyone who reaches the machine stop the stream. The
live-loop test (`test_live_loop.py`) checks every socket of the platform under `make up`.
"""

from __future__ import annotations

import json
import os
import urllib.request

from tests.helpers import exposed, listening_sockets


def test_the_embedded_spark_listens_on_loopback_only(spark):
    sockets = [s for s in listening_sockets([os.getpid()]) if s[1] == "java"]
    ui_port = int(spark.sparkContext.uiWebUrl.rsplit(":", 1)[1])
    # The driver's RPC endpoint, its block manager and the UI, at least.
    assert len(sockets) >= 3 and ui_port in {s[3] for s in sockets}, sockets
    assert exposed(sockets) == []
    assert spark.sparkContext.uiWebUrl.split("//")[1].startswith(("127.0.0.1:", "localhost:"))


def test_the_spark_ui_has_no_kill_links(spark):
    # As the running UI reports it (its REST API), where the kill links would be drawn.
    app = spark.sparkContext.applicationId
    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{app}/environment"
    with urllib.request.urlopen(url, timeout=10) as response:
        properties = dict(json.load(response)["sparkProperties"])
    assert properties["spark.ui.killEnabled"] == "false"
