"""Browser fixtures: the real app on a free port (threaded WSGI), the sandbox, Debian's Chromium."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveApp:
    url: str
    sandbox: Any


@pytest.fixture
def live_app(app) -> Iterator[LiveApp]:
    """The app served by werkzeug in a thread; PUBLIC_URL and the sandbox point at each other."""
    from werkzeug.serving import make_server

    from crm_app.sandbox import SandboxServer

    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    app.config["PUBLIC_URL"] = public
    sandbox = SandboxServer(
        port=0,
        contacts=40,
        leads=30,
        tasks=20,
        rate_limit=0,
        redirect_uri=public + "/admin/crm/callback",
    ).start()
    app.config["AMOCRM_BASE_URL"] = sandbox.url
    from crm_app.security import build_csp

    # The CSP's form-action names the amoCRM origin, which is only known now.
    app.extensions["crm_csp"] = build_csp(sandbox.url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveApp(public, sandbox)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        sandbox.stop()


@pytest.fixture
def browser(request):
    """Debian's Chromium through Playwright; skipped by name when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(
            f"{request.node.name}: Debian's chromium is not installed "
            "(apt-get install -y chromium; .ci/run does it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
