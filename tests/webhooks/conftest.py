"""Webhook fixtures: a sandbox, an owner connected to it, body builders, real servers."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import (
    Contact,
    InboxStatus,
    Lead,
    Task,
    WebhookDelivery,
    WebhookEventKey,
)
from crm_app.sandbox.server import SandboxServer
from testkit.sandbox_link import connect_owner_to_sandbox

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "amocrm"  # documented examples, see its README
MODELS = {"contacts": Contact, "leads": Lead, "tasks": Task}


# -- encoding ---------------------------------------------------------------------------------------


def php_pairs(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    """PHP http_build_query order and key shape (lists get indexes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            php_pairs(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            php_pairs(f"{prefix}[{index}]", item, out)
    elif value is not None:
        out.append((prefix, str(value)))


def form(body: dict[str, Any]) -> bytes:
    pairs: list[tuple[str, str]] = []
    php_pairs("", body, pairs)
    return urlencode(pairs).encode("ascii")


def account_block(account_id: int | str, subdomain: str) -> dict[str, Any]:
    return {
        "account": {
            "subdomain": subdomain,
            "id": str(account_id),
            "_links": {"self": f"https://{subdomain}.amocrm.ru"},
        }
    }


def with_account(raw: bytes, account_id: int | str, subdomain: str) -> bytes:
    """A sample's derived body with the `account[...]` keys a real delivery puts first."""
    return form(account_block(account_id, subdomain)) + b"&" + raw.strip()


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# -- the connected owner --------------------------------------------------------------------------


@pytest.fixture
def sandbox(make_sandbox) -> SandboxServer:
    return make_sandbox(contacts=30, leads=30, tasks=20)


def connect_owner(server: SandboxServer, name: str = "acme", user_id: int | None = None) -> int:
    """Owner + AmoConfig matching the sandbox + tokens from a real code exchange.

    Users are left to the tests that sign in (`make_user(..., owner=name)`): hashing a password
    costs most of a second.
    """
    from crm_app.commands.users import get_or_create_owner

    owner_id = get_or_create_owner(name).id
    connect_owner_to_sandbox(owner_id, server, user_id=user_id)
    return owner_id


class Owner:
    """The connected owner plus helpers tests keep needing."""

    def __init__(self, app, client, server: SandboxServer, owner_id: int) -> None:
        from crm_app.services.webhooks import ensure_webhook_token

        self.app = app
        self.client = client
        self.server = server
        self.id = owner_id
        self.token = ensure_webhook_token(owner_id)
        self.account_id = server.account.id
        self.subdomain = server.account.subdomain

    @property
    def path(self) -> str:
        return f"/webhooks/amocrm/{self.token}"

    def body(self, payload: dict[str, Any]) -> bytes:
        return form({**account_block(self.account_id, self.subdomain), **payload})

    def post(self, body: bytes, **kwargs: Any) -> Any:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        headers.update(kwargs.pop("headers", {}))
        return self.client.post(self.path, data=body, headers=headers, **kwargs)

    def process(self) -> dict[str, Any]:
        from crm_app.services.webhooks.apply import process_owner

        return process_owner(self.id)

    def ids(self, entity: str) -> list[int]:
        return sorted(self.server.account.tables[entity].records)

    def record(self, entity: str, entity_id: int) -> dict[str, Any] | None:
        return self.server.account.tables[entity].get(entity_id)

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        resp = requests.request(method, f"{self.server.url}/_sandbox/{path}", timeout=10, **kwargs)
        assert resp.status_code < 300, resp.text
        return resp


@pytest.fixture
def owner(app, client, sandbox) -> Owner:
    return Owner(app, client, sandbox, connect_owner(sandbox))


# -- database helpers -------------------------------------------------------------------------------


def inbox_rows(owner_id: int | None = None) -> list[WebhookDelivery]:
    db.session.expire_all()
    query = select(WebhookDelivery).order_by(WebhookDelivery.id)
    if owner_id is not None:
        query = query.where(WebhookDelivery.owner_id == owner_id)
    return list(db.session.scalars(query))


def count(model: Any, *where: Any) -> int:
    db.session.expire_all()
    return int(db.session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def pending(owner_id: int) -> int:
    return count(
        WebhookDelivery,
        WebhookDelivery.owner_id == owner_id,
        WebhookDelivery.status == InboxStatus.PENDING,
    )


def event_keys(owner_id: int) -> int:
    return count(WebhookEventKey, WebhookEventKey.owner_id == owner_id)


def mirror(owner_id: int, entity: str, entity_id: int) -> Any:
    db.session.expire_all()
    return db.session.get(MODELS[entity], (owner_id, entity_id))


def wait_until(check: Callable[[], Any], timeout: float = 20.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    return last


# -- real servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve_app(app) -> Iterator[Callable[[], str]]:
    """serve_app() → base URL of `app` on a threaded werkzeug server (PUBLIC_URL set to it)."""
    from werkzeug.serving import ThreadedWSGIServer, make_server

    servers: list[Any] = []

    def start() -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        assert isinstance(server, ThreadedWSGIServer)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_port}"
        app.config["PUBLIC_URL"] = url
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gunicorn_app(app, tmp_path) -> Iterator[Callable[..., str]]:
    """gunicorn_app(env={...}) → base URL of a real gunicorn serving wsgi:app like production."""
    from tests.conftest import app_env

    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str] | None = None, workers: int = 2) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        full = app_env(app) | {
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": str(workers),
            "PUBLIC_URL": url,
            "LOG_LEVEL": "warning",
        }
        full.update(env or {})
        log = open(tmp_path / f"gunicorn-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "wsgi:app", "--access-logfile", "/dev/null"],
            cwd=ROOT,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                return url
            except requests.RequestException:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError((tmp_path / f"gunicorn-{port}.log").read_text()[-3000:])

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


class PrivateRedis:
    """A throwaway redis-server on a free port that a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
