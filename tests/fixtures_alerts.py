"""Real alert receivers for the tests: an SMTP server (aiosmtpd) and an HTTP webhook receiver.

The fixtures `mailbox` and `webhook` reach every test module (conftest.py registers this
module in `pytest_plugins`).
"""

from __future__ import annotations

import email
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from expo_platform.ops.processes import free_port


@dataclass
class Mailbox:
    """Messages the SMTP server received; `address` is its host:port."""

    address: str
    messages: list[email.message.Message] = field(default_factory=list)

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[email.message.Message]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.box.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    port = free_port()
    box = Mailbox(f"127.0.0.1:{port}")
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=port)
    controller.start()
    yield box
    controller.stop()


@dataclass
class Webhook:
    """JSON bodies the receiver got; `url` is where to post."""

    url: str
    bodies: list[dict] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            hook.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/expo"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
