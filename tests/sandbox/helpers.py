"""Helpers shared by the sandbox tests: an API session and the code exchange."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import requests

from crm_app.sandbox import SandboxServer

Factory = Callable[..., SandboxServer]


class Api(requests.Session):
    """A requests session bound to a sandbox origin, with the Bearer token set."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__()
        self.base = base
        self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, str) and url.startswith("/"):
            url = self.base + url
        return super().request(method, url, *args, **kwargs)


def exchange(server: SandboxServer, code: str, **overrides: Any) -> requests.Response:
    cfg = server.config
    body = {
        "client_id": cfg.client_id,
        "client_secret": cfg.client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": cfg.redirect_uri,
    }
    body.update(overrides)
    return requests.post(f"{server.url}/oauth2/access_token", json=body, timeout=5)


def api_for(server: SandboxServer) -> Api:
    """A client authorized the way the app does it: a code through the token endpoint."""
    reply = requests.post(
        f"{server.url}/_sandbox/auth-code", json={"client_id": server.config.client_id}, timeout=5
    )
    tokens = exchange(server, reply.json()["code"]).json()
    return Api(server.url, tokens["access_token"])


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0


@dataclass
class Receiver:
    """A tiny local HTTP server that records requests and answers with scripted statuses."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.default_status

    def record(self, item: Received) -> None:
        with self.arrived:
            self.received.append(item)
            self.arrived.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)
