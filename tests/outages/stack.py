"""A whole deployment on free ports for fault injection: PostgreSQL, Redis, gunicorn, Celery.

Every server here is started by us (its own `initdb` cluster, its own `redis-server`), so a test
may stop, kill and restart them without touching the machine's shared services. Used by
`tests/outages/` and by the outage benchmark.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; that value, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            if time.monotonic() >= deadline:
                raise  # the check itself is broken, not merely unmet
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A private cluster: `initdb` once, then `start` / `stop` (fast shutdown) at will."""

    def __init__(self) -> None:
        # Its own folder under the system temp dir: the postgres user cannot enter pytest's.
        self.home = Path(tempfile.mkdtemp(prefix="crm-outage-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
        self.dir = self.home / "pgdata"
        self.log = self.home / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> Postgres:
        subprocess.run(
            _as_postgres(
                ["initdb", "-D", str(self.dir), "-U", "postgres", "-A", "trust", "--no-sync"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(self.dir), *args]), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def start(self) -> Postgres:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200 -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected at once, as in a crash or a failover."""
        self._ctl("-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.dir / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self._ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)


class Redis:
    """A private redis-server with an fsynced append-only file, so a kill loses no message."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        if not wait_for(client.ping, 20):
            raise RuntimeError("private redis-server did not start")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: the broker dies without a goodbye, like a crashed container."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Process:
    """A child process whose log goes to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def gunicorn(env: dict[str, str], port: int, log: Path) -> Process:
    """The repository's gunicorn.conf.py (2 gthread workers × 4 threads) on `port`."""
    run_env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}")
    proc = Process(
        "gunicorn", [str(BIN / "gunicorn"), "wsgi:app", "-c", str(ROOT / "gunicorn.conf.py")],
        run_env, log,
    )  # fmt: skip
    import requests

    if not wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, 60):
        proc.stop()
        raise RuntimeError("gunicorn did not start:\n" + proc.text()[-3000:])
    return proc


def celery_worker(
    env: dict[str, str], queue: str, name: str, log: Path, *, beat: bool, concurrency: int = 2,
    pool: str = "prefork",
) -> Process:  # fmt: skip
    """`celery worker` (with embedded beat when `beat`) consuming `queue`."""
    cmd = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", queue,
           "-n", f"{name}@%h", "--concurrency", str(concurrency), "--pool", pool, "-l", "INFO",
           "--without-gossip", "--without-mingle"]  # fmt: skip
    if beat:
        cmd += ["-B", "-s", str(log.parent / f"{name}-beat-schedule")]
    proc = Process(name, cmd, env, log)
    if not wait_for(lambda: "ready." in proc.text() or not proc.alive(), 60) or not proc.alive():
        proc.stop()
        raise RuntimeError(f"celery worker {name} did not start:\n" + proc.text()[-3000:])
    return proc


PASSWORD = "outage-password-1"


@dataclass
class Deployment:
    base: Path
    pg: Postgres
    redis: Redis
    server: Any  # SandboxServer
    app: Any
    env: dict[str, str]
    queue: str
    owner_id: int = 0
    api_key: str = ""
    web: Process | None = None
    worker: Process | None = None
    web_url: str = ""
    extra: list[Process] = field(default_factory=list)

    # -- the servers' lives ---------------------------------------------------------------------

    def processes(self) -> list[Process]:
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

    def wait_run(self, run_id: int, timeout: float) -> Any:
        """The finished SyncRun, or None if it is still queued or running after `timeout`."""
        from crm_app.models import SyncRun

        def done() -> Any:
            run = self.scalar(select(SyncRun).where(SyncRun.id == run_id))
            return run if run is not None and run.status not in ("queued", "running") else None

        return wait_for(done, timeout, interval=0.25)

    def mirror_matches(self, entity: str) -> bool:
        """The mirror holds exactly the sandbox's records of `entity` (ids and update times)."""
        from crm_app.models import Contact, Lead, Task

        model: Any = {"contacts": Contact, "leads": Lead, "tasks": Task}[entity]
        table = self.server.account.tables[entity]
        want = {rid: rec.get("updated_at") for rid, rec in table.records.items()}
        got = dict(
            self.rows(select(model.id, model.updated_at).where(model.owner_id == self.owner_id))
        )
        return set(got) == set(want) and all(
            got[rid] == want[rid] for rid in want if want[rid] is not None
        )

    def hook(self) -> dict[str, Any]:
        """Our webhook as the sandbox holds it."""
        hooks = requests.get(f"{self.server.url}/_sandbox/webhooks", timeout=10).json()
        ours = [h for h in hooks if h.get("destination", "").startswith(self.web_url)]
        assert len(ours) == 1, hooks
        return ours[0]


def _env(
    base: Path, pg_url: str, redis_url: str, sandbox_url: str, queue: str, intervals: dict[str, str]
) -> dict[str, str]:
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
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "INFO",
            **intervals,
        }
    )
    return env


@contextmanager
def deployment(
    base: Path, intervals: dict[str, str], **sandbox_options: Any
) -> Iterator[Deployment]:
    """The whole deployment, connected to a sandbox account, subscribed and fully synced."""
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

    pg = Postgres().init()
    redis_server = Redis(base).start()
    engine = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text('CREATE DATABASE "crm"'))
    engine.dispose()
    pg_url = pg.url.rsplit("/", 1)[0] + "/crm"
    # 5 min of amoCRM's retry ladder pass in 0.5 s; the disable threshold is lowered by the
    # watchdog test only.
    server = SandboxServer(port=0, quiet=True, **sandbox_options).start()
    queue = f"outages-{os.getpid()}"
    env = _env(base, pg_url, redis_server.url, server.url, queue, intervals)
    web_port = free_port()
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
        dep.web = gunicorn(env, web_port, base / "gunicorn.log")
        dep.worker = celery_worker(env, queue, "main", base / "worker.log", beat=True)
        with app.app_context():
            state = subscribe(owner_id)
            assert state["subscribed"], state
            first = start_sync(owner_id, full=True, trigger="manual").id
            db.session.remove()
        run = dep.wait_run(first, 120)
        assert run is not None and run.status == "success", run and run.error
        yield dep
    finally:
        for proc in [*dep.extra, dep.worker, dep.web]:
            if proc is not None:
                proc.stop()
        server.stop()
        redis_server.close()
        pg.close()
