"""Shared fixtures: a real PostgreSQL database and Redis per test session, the app, users."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
PG_BASE = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Parallel test sessions (developers, CI) each get their own database and Redis db number.
SESSION_TAG = f"{os.getpid()}"
REDIS_DB = 0  # claimed in pytest_sessionstart


def _claim_redis_db() -> int:
    """Claim a Redis db number (1-15) no other live test session holds (claims live in db 0)."""
    import redis

    base = REDIS_BASE.rsplit("/", 1)[0] if REDIS_BASE.count("/") >= 3 else REDIS_BASE
    client = redis.Redis.from_url(f"{base}/0", socket_timeout=3)
    for n in [*range(1 + os.getpid() % 15, 16), *range(1, 16)]:
        if client.set(f"crm-test:redis-db-claim:{n}", SESSION_TAG, nx=True, ex=4 * 3600):
            return n
    raise RuntimeError("every Redis db 1-15 is claimed by another test session")


def _release_redis_db() -> None:
    import redis

    base = REDIS_BASE.rsplit("/", 1)[0] if REDIS_BASE.count("/") >= 3 else REDIS_BASE
    client = redis.Redis.from_url(f"{base}/0", socket_timeout=3)
    key = f"crm-test:redis-db-claim:{REDIS_DB}"
    if client.get(key) == SESSION_TAG.encode():
        client.delete(key)


def _pg_admin_url() -> sa.URL:
    url = make_url(PG_BASE)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _redis_url() -> str:
    base = REDIS_BASE.rsplit("/", 1)[0] if REDIS_BASE.count("/") >= 3 else REDIS_BASE
    return f"{base}/{REDIS_DB}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail loudly, not with a thousand errors, when a required service is down."""
    try:
        engine = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        pytest.exit(
            f"PostgreSQL is unreachable at {PG_BASE} ({type(exc).__name__}: {exc}). "
            "Start it or set TEST_DATABASE_URL.",
            returncode=3,
        )
    import redis

    global REDIS_DB
    try:
        redis.Redis.from_url(REDIS_BASE, socket_timeout=3).ping()
        REDIS_DB = _claim_redis_db()
    except Exception as exc:
        pytest.exit(
            f"Redis is unreachable at {REDIS_BASE} ({type(exc).__name__}). "
            "Start it or set REDIS_URL.",
            returncode=3,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import contextlib

    if REDIS_DB:
        with contextlib.suppress(Exception):
            _release_redis_db()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin = _pg_admin_url()
    name = f"crm_test_{SESSION_TAG}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    yield url
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    url = _redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("instance")
    os.environ["CRM_INSTANCE_PATH"] = str(path)
    return path


@pytest.fixture(scope="session")
def base_config(pg_url: str, redis_url: str, instance_dir: Path) -> dict[str, object]:
    from cryptography.fernet import Fernet

    return {
        "SQLALCHEMY_DATABASE_URI": pg_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url,
        "INSTANCE_PATH": str(instance_dir),
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "CRM_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "TESTING": True,
        "PUBLIC_URL": "http://127.0.0.1:5000",
        "CELERY_QUEUE": f"crm-test-{SESSION_TAG}",
    }


@pytest.fixture(scope="session")
def _schema(base_config: dict[str, object]) -> None:
    from crm_app import create_app
    from crm_app.extensions import db

    app = create_app(dict(base_config))
    with app.app_context():
        db.create_all()
        db.engine.dispose()


def _isolated_client_class():
    from flask.testing import FlaskClient

    class _Isolated(FlaskClient):
        """Each request in a fresh app context, as in production.

        The `app` fixture keeps one app context open for the whole test and Flask reuses it for
        every request, so without this `g` (Flask-Login's cached user, Flask-WTF's CSRF token)
        would carry over from one request, or one client, to the next.
        """

        def open(self, *args, **kwargs):
            with self.application.app_context():
                return super().open(*args, **kwargs)

    return _Isolated


IsolatedClient = _isolated_client_class()


def _truncate_all() -> None:
    from crm_app.extensions import db

    names = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    db.session.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    db.session.commit()


@pytest.fixture
def app(base_config: dict[str, object], _schema: None):
    """The app on the session's PostgreSQL database, emptied before each test."""
    import redis

    from crm_app import create_app
    from crm_app.extensions import db

    application = create_app(dict(base_config))
    application.test_client_class = IsolatedClient
    with application.app_context():
        _truncate_all()
        redis.Redis.from_url(str(base_config["REDIS_URL"])).flushdb()
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch) -> None:
    """argon2id at production cost takes ~0.5 s a hash; tests that are not about hashing create
    and sign in many users, so they use the same algorithm at its lowest cost."""
    from argon2 import PasswordHasher

    from crm_app.auth import passwords

    monkeypatch.setattr(
        passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """make_user("alice", role="user", owner="acme") → User (password: 'password123')."""
    from crm_app.auth.passwords import hash_password
    from crm_app.commands.users import create_user
    from crm_app.extensions import db

    def _make(
        username: str, role: str = "admin", owner: str | None = None, password: str = "password123"
    ):
        # Seeded test users keep a short well-known password; the password policy (which
        # refuses it) is tested on its own in tests/test_auth_security.py.
        user = create_user(username, "seed-only " + username + " Zq7!", role, owner)
        user.password_hash = hash_password(password)
        db.session.commit()
        return user

    return _make


@pytest.fixture
def login(client):
    """login(username) signs the test client in through the real form (CSRF off in TESTING?)."""

    def _login(username: str, password: str = "password123") -> None:
        with client.session_transaction() as sess:
            sess.clear()
        resp = client.post(
            "/login", data={"username": username, "password": password, "csrf_token": _csrf(client)}
        )
        assert resp.status_code == 302, resp.data[:300]

    return _login


def _csrf(client) -> str:
    import re

    html = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    return match.group(1) if match else ""


@pytest.fixture
def csrf_token(client):
    """A valid CSRF token for the test client's session."""
    return lambda: _csrf(client)


@pytest.fixture
def auth_header(client):
    """auth_header(username) → {"Authorization": "Bearer <jwt>"} via POST /auth/token."""

    def _hdr(username: str, password: str = "password123") -> dict[str, str]:
        resp = client.post("/auth/token", json={"username": username, "password": password})
        assert resp.status_code == 200, resp.data
        return {"Authorization": f"Bearer {resp.json['access_token']}"}

    return _hdr


sys.path.insert(0, str(ROOT))


@pytest.fixture
def make_sandbox():
    """make_sandbox(**options) → an amoCRM sandbox started on a free port.

    Takes any `SandboxConfig` option; contacts, leads and tasks default to 60, 40 and 30. Every
    sandbox started in the test is stopped after it.
    """
    from crm_app.sandbox import SandboxServer

    started: list[SandboxServer] = []

    def start(**options: Any) -> SandboxServer:
        options.setdefault("contacts", 60)
        options.setdefault("leads", 40)
        options.setdefault("tasks", 30)
        server = SandboxServer(port=0, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def app_env(app) -> dict[str, str]:
    """Environment that makes a child process (worker, gunicorn) build the same app as `app`."""
    cfg = app.config
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": cfg["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": cfg["REDIS_URL"],
            "SECRET_KEY": cfg["SECRET_KEY"],
            "CRM_ENCRYPTION_KEY": cfg["CRM_ENCRYPTION_KEY"],
            "CRM_INSTANCE_PATH": cfg["INSTANCE_PATH"],
            "CELERY_QUEUE": cfg["CELERY_QUEUE"],
            "AMOCRM_BASE_URL": cfg.get("AMOCRM_BASE_URL") or "",
            "AMOCRM_RATE_LIMIT": str(cfg["AMOCRM_RATE_LIMIT"]),
            "PUBLIC_URL": cfg["PUBLIC_URL"],
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture
def celery_worker(app, tmp_path):
    """start_worker(name="w1", concurrency=2, env={...}) → a real `celery worker` subprocess.

    Uses the test session's Redis broker and queue; call after setting app.config (e.g.
    AMOCRM_BASE_URL) so the worker builds the same app. Besides the app's tasks the worker
    knows the probes in `tests/worker_tasks.py`. All workers are stopped afterwards.
    """
    import subprocess
    import time

    procs: list[subprocess.Popen[bytes]] = []

    def start(
        name: str = "w1",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        pool: str = "prefork",
    ) -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{name}.log"
        full_env = app_env(app) | (env or {})
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/celery"),
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                app.config["CELERY_QUEUE"],
                "-n",
                f"{name}-{SESSION_TAG}@%h",
                "--concurrency",
                str(concurrency),
                "--pool",
                pool,
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--include",
                "tests.worker_tasks",
                "--logfile",
                str(log),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = log  # type: ignore[attr-defined]  # read back when a test fails
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and "ready." in log.read_text(errors="replace"):
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        text = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"celery worker {name} did not start:\n{text[-3000:]}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
