"""Fixtures: a sandbox on a free port per test, an authorized client, a local webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api, Factory, Received, Receiver, api_for


@pytest.fixture
def sandbox(make_sandbox: Factory) -> SandboxServer:
    """Small data and no rate limit: tests that are not about limits fire freely."""
    return make_sandbox(rate_limit=0)


@pytest.fixture
def api(sandbox: SandboxServer) -> Iterator[Api]:
    session = api_for(sandbox)
    yield session
    session.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            target = holder["r"]
            headers = dict(self.headers.items())
            target.record(Received(self.command, self.path, headers, body, time.monotonic()))
            status = target.next_status()
            if target.delay:
                time.sleep(target.delay)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sandbox gave up waiting (timeout tests)

        do_GET = _handle
        do_POST = _handle

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(server)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield holder["r"]
    server.shutdown()
    server.server_close()
