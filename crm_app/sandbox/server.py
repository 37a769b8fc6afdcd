"""SandboxServer: the sandbox on a threaded WSGI server in a background thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time
from typing import Any

from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler, make_server

from crm_app.sandbox.app import create_app
from crm_app.sandbox.config import SandboxConfig
from crm_app.sandbox.oauth import Integration
from crm_app.sandbox.state import Sandbox
from crm_app.sandbox.store import Account


class QuietHandler(WSGIRequestHandler):
    """No per-request log line: printing would cost more than serving a page."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class SandboxServer:
    """`SandboxServer(port=0, contacts=1000).start()`; keyword arguments are SandboxConfig fields."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.config = options.pop("config", None) or SandboxConfig()
        unknown = [k for k in options if not hasattr(self.config, k)]
        if unknown:
            raise TypeError(f"unknown sandbox options: {', '.join(sorted(unknown))}")
        for key, value in options.items():
            setattr(self.config, key, value)
        self.host = host
        self.requested_port = port
        self.sandbox = Sandbox(self.config)
        self.app = create_app(self.sandbox)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------
    def bind(self) -> SandboxServer:
        """Open the listening socket (port 0 picks a free one; see .port and .url)."""
        if self._server is None:
            handler = QuietHandler if self.config.quiet else WSGIRequestHandler
            server = make_server(
                self.host, self.requested_port, self.app, threaded=True, request_handler=handler
            )
            if isinstance(server, ThreadedWSGIServer):  # what threaded=True builds
                server.daemon_threads = True
            self._server = server
        return self

    def start(self) -> SandboxServer:
        """Serve from a background thread; returns self so `SandboxServer(...).start()` reads well."""
        self.bind()
        assert self._server is not None
        self.sandbox.start()
        # A short poll interval keeps stop() (and so every test teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Run in the calling thread (the CLI)."""
        self.bind()
        assert self._server is not None
        self.sandbox.start()
        try:
            self._server.serve_forever()
        finally:
            self.sandbox.stop()

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()  # only a running serve_forever can acknowledge this
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sandbox.stop()
        self._server, self._thread = None, None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- addresses --------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The one origin for consent page, token endpoint and API (AMOCRM_BASE_URL)."""
        return f"http://{self.host}:{self.port}"

    # --- conveniences for tests and benchmarks ----------------------------------------
    @property
    def accounts(self) -> list[Account]:
        return self.sandbox.accounts

    @property
    def account(self) -> Account:
        return self.sandbox.default_account

    def register_integration(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        name: str | None = None,
        disconnect_url: str | None = None,
        accounts: list[Any] | None = None,
    ) -> Integration:
        return self.sandbox.register_integration(
            client_id, client_secret, redirect_uri, name, disconnect_url, accounts
        )

    def auth_code(self, client_id: str | None = None, account: Any = None) -> str:
        acc = self.sandbox.find_account(account) or self.account
        code = self.sandbox.tokens.issue_code(
            client_id or self.config.client_id, acc.id, acc.admin.id
        )
        return code.code

    def token_pair(self, client_id: str | None = None, account: Any = None) -> dict[str, Any]:
        """Tokens without the HTTP dance, for tests that only need an authorized client."""
        acc = self.sandbox.find_account(account) or self.account
        return self.sandbox.tokens.issue_pair(
            client_id or self.config.client_id, acc.id, acc.admin.id
        )

    def long_lived_token(
        self, client_id: str | None = None, days: int = 365, account: Any = None
    ) -> str:
        acc = self.sandbox.find_account(account) or self.account
        cid = client_id or self.config.client_id
        return self.sandbox.tokens.issue_long_lived(cid, acc.id, acc.admin.id, days).token

    def requests_log(self, **filters: Any) -> list[dict[str, Any]]:
        return self.sandbox.log.items(**filters)

    def clear_requests(self) -> None:
        self.sandbox.log.clear()

    def deliveries(self) -> list[dict[str, Any]]:
        return self.sandbox.dispatcher.deliveries()

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least `count` delivery attempts are logged (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.deliveries()
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.deliveries()

    def expire_tokens(self) -> int:
        return self.sandbox.tokens.expire_all()

    def unblock(self) -> None:
        self.sandbox.limiter.unblock()

    def advance_clock(self, seconds: float) -> int:
        """Move the sandbox's time on: expiries, webhook retries, rate windows and blocks."""
        return self.sandbox.clock.advance(seconds)

    def freeze_clock(self) -> None:
        """Stop the sandbox's time; from now on only ``advance_clock`` moves it."""
        self.sandbox.clock.freeze()

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        """Block until no webhook delivery is due or being sent; False on timeout."""
        return self.sandbox.dispatcher.wait_idle(timeout)

    def reset(self) -> None:
        self.sandbox.limiter.reset()
        self.sandbox.log.clear()
        self.sandbox.dispatcher.clear()
