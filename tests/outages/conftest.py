"""One deployment for the whole outage suite: its own PostgreSQL and Redis, gunicorn, a Celery
worker with embedded beat, and the amoCRM sandbox over HTTP, all on free ports.

The intervals that heal outages (takeover, sweeps, watchdog) are shortened through the
environment, exactly as an operator would set them; the assertions are the production ones.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from tests.outages import stack

pytestmark = [pytest.mark.worker, pytest.mark.slow]

PASSWORD = "outage-password-1"

# What the deployment is told (the defaults are minutes; see docs/deployment.md "Outages").
INTERVALS = {
    "SYNC_STALE_SECONDS": "6",
    "SYNC_HEARTBEAT_SECONDS": "1",
    "SYNC_TAKEOVER_INTERVAL_SECONDS": "2",
    "INBOUND_SWEEP_SECONDS": "2",
    "WEBHOOK_DRAIN_SECONDS": "2",
    "WEBHOOK_WATCHDOG_SECONDS": "3",
    "WEBHOOK_SPOOL_SWEEP_SECONDS": "0.5",
    "SYNC_INTERVAL_SECONDS": "86400",
    "RECONCILE_INTERVAL_SECONDS": "86400",
    "INBOUND_RETRY_BASE_SECONDS": "1",
}


@dataclass
class Deployment:
    base: Path
    pg: stack.Postgres
    redis: stack.Redis
    server: Any  # SandboxServer
    app: Any
    env: dict[str, str]
    queue: str
    owner_id: int = 0
    api_key: str = ""
    web: stack.Process | None = None
    worker: stack.Process | None = None
    web_url: str = ""
    extra: list[stack.Process] = field(default_factory=list)

    # -- the servers' lives ---------------------------------------------------------------------

    def processes(self) -> list[stack.Process]:
        return [p for p in (self.web, self.worker) if p is not None]

    def assert_alive(self, pids: dict[str, int]) -> None:
        """The very processes started for the suite still run (nobody restarted them)."""
        for proc in self.processes():
            assert proc.alive(), f"{proc.name} died:\n{proc.text()[-4000:]}"
            assert pids[proc.name] == proc.pid
        self.assert_worker_children()

    def assert_worker_children(self) -> None:
        assert self.worker is not None
        assert "Unrecoverable error" not in self.worker.text(), self.worker.text()[-4000:]

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.processes()}

    # -- HTTP ----------------------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.web_url + path, timeout=15, **kwargs)

    def inbound(self, n: int, tag: str) -> requests.Response:
        return requests.post(
            self.web_url + "/api/crm/inbound",
            json={
                "channel": "widget",
                "external_id": f"{tag}-{n}",
                "name": f"{tag} {n}",
                "message": f"outage {tag} #{n}",
            },
            headers={"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": f"{tag}-{n}"},
            timeout=15,
        )

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        resp = requests.request(method, f"{self.server.url}/_sandbox/{path}", timeout=10, **kwargs)
        assert resp.status_code < 300, resp.text
        return resp

    def signed_in(self) -> requests.Session:
        session = requests.Session()
        html = session.get(self.web_url + "/login", timeout=10).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', html)
        resp = session.post(
            self.web_url + "/login",
            data={
                "username": "outage-admin",
                "password": PASSWORD,
                "csrf_token": token.group(1) if token else "",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert resp.status_code == 302, resp.text[:500]
        return session

    # -- the database, read from the test process ----------------------------------------------

    def scalar(self, query: Any) -> Any:
        from crm_app.extensions import db

        with self.app.app_context():
            try:
                return db.session.scalar(query)
            finally:
                db.session.remove()

    def rows(self, query: Any) -> list[Any]:
        from crm_app.extensions import db

        with self.app.app_context():
            try:
                return list(db.session.execute(query))
            finally:
                db.session.remove()

    def count(self, model: Any, *where: Any) -> int:
        return int(self.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def hook(self) -> dict[str, Any]:
        """Our webhook as the sandbox holds it."""
        hooks = requests.get(f"{self.server.url}/_sandbox/webhooks", timeout=10).json()
        ours = [h for h in hooks if h.get("destination", "").startswith(self.web_url)]
        assert len(ours) == 1, hooks
        return ours[0]


def _env(base: Path, pg_url: str, redis_url: str, sandbox_url: str, queue: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": pg_url,
            "REDIS_URL": redis_url,
            "CRM_INSTANCE_PATH": str(base / "instance"),
            "SECRET_KEY": "outage-secret-" + "x" * 40,
            "CRM_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "CELERY_QUEUE": queue,
            "AMOCRM_BASE_URL": sandbox_url,
            "PYTHONPATH": str(stack.ROOT),
            "LOG_LEVEL": "INFO",
            **INTERVALS,
        }
    )
    return env


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    import sqlalchemy as sa

    from crm_app import create_app
    from crm_app.commands.users import create_user, get_or_create_owner
    from crm_app.config import load_config
    from crm_app.extensions import db
    from crm_app.sandbox.server import SandboxServer
    from crm_app.services.inbound.keys import create_api_key
    from crm_app.services.sync import start_sync
    from crm_app.services.webhooks.subscription import subscribe
    from testkit.sandbox_link import connect_owner_to_sandbox

    base = tmp_path_factory.mktemp("outages")
    pg = stack.Postgres().init()
    redis_server = stack.Redis(base).start()
    engine = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text('CREATE DATABASE "crm"'))
    engine.dispose()
    pg_url = pg.url.rsplit("/", 1)[0] + "/crm"
    # 5 min of amoCRM's retry ladder pass in 0.5 s; the disable threshold is lowered by the
    # watchdog test only.
    server = SandboxServer(
        port=0, quiet=True, contacts=1500, leads=300, tasks=150, webhook_time_scale=1 / 600
    ).start()
    queue = f"outages-{os.getpid()}"
    env = _env(base, pg_url, redis_server.url, server.url, queue)
    web_port = stack.free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    env["PUBLIC_URL"] = web_url

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k not in ("PYTHONPATH",)})
    try:
        app = create_app({**load_config(), "TESTING": True})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    dep = Deployment(base, pg, redis_server, server, app, env, queue, web_url=web_url)
    try:
        with app.app_context():
            db.create_all()
            owner_id = get_or_create_owner("outage").id
            create_user("outage-admin", PASSWORD, "admin", "outage")
            connect_owner_to_sandbox(owner_id, server, auto_create_lead=True)
            dep.owner_id = owner_id
            dep.api_key = create_api_key(owner_id, "outage")[0]
            db.session.remove()
        dep.web = stack.gunicorn(env, web_port, base / "gunicorn.log")
        dep.worker = stack.celery_worker(env, queue, "main", base / "worker.log", beat=True)
        with app.app_context():
            state = subscribe(owner_id)
            assert state["subscribed"], state
            first = start_sync(owner_id, full=True, trigger="manual").id
            db.session.remove()
        run = wait_run(dep, first, 120)
        assert run is not None and run.status == "success", run and run.error
        yield dep
    finally:
        for proc in [*dep.extra, dep.worker, dep.web]:
            if proc is not None:
                proc.stop()
        server.stop()
        redis_server.close()
        pg.close()


@pytest.fixture
def healthy(deployment: Deployment) -> Iterator[Deployment]:
    """Every test starts and ends with both servers up and the original processes alive."""
    if not deployment.pg.running():
        deployment.pg.start()
    if deployment.redis.proc is None or deployment.redis.proc.poll() is not None:
        deployment.redis.start()
    pids = deployment.pids()
    yield deployment
    deployment.assert_alive(pids)


def wait_run(dep: Deployment, run_id: int, timeout: float) -> Any:
    from crm_app.models import SyncRun

    def done() -> Any:
        run = dep.scalar(select(SyncRun).where(SyncRun.id == run_id))
        return run if run is not None and run.status not in ("queued", "running") else None

    return stack.wait_for(done, timeout, interval=0.25)


def mirror_matches(dep: Deployment, entity: str) -> bool:
    """The mirror holds exactly the sandbox's records of `entity` (ids and update times)."""
    from crm_app.models import Contact, Lead, Task

    models: dict[str, type[Contact | Lead | Task]] = {
        "contacts": Contact,
        "leads": Lead,
        "tasks": Task,
    }
    model = models[entity]
    table = dep.server.account.tables[entity]
    want = {rid: rec.get("updated_at") for rid, rec in table.records.items()}
    got = dict(dep.rows(select(model.id, model.updated_at).where(model.owner_id == dep.owner_id)))
    return set(got) == set(want) and all(
        _epoch(got[rid]) == want[rid] for rid in want if want[rid] is not None
    )


def _epoch(value: Any) -> Any:
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return value


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
