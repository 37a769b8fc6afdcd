"""What the benchmark modules share: a throwaway database, ports, the app's settings, processes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, seconds: float = 30.0) -> None:
    """Poll `url` until anything answers; raise if nothing does in time."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with suppress(requests.RequestException):
            requests.get(url, timeout=1)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def bench_database(area: str) -> Iterator[str]:
    """A fresh database `crm_bench_<area>_<pid>`, dropped afterwards; yields its URL."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN)
    name = f"crm_bench_{area}_{os.getpid()}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def settings(
    db_url: str,
    instance: str,
    queue: str,
    sandbox_url: str,
    *,
    rate: float | None = None,
    log_level: str = "warning",
) -> dict[str, str]:
    """The app's environment for a benchmark run; `rate` sets AMOCRM_RATE_LIMIT when given."""
    from cryptography.fernet import Fernet

    values = {
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS,
        "CRM_INSTANCE_PATH": instance,
        "SECRET_KEY": "bench-secret-" + "x" * 40,
        "CRM_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CELERY_QUEUE": queue,
        "AMOCRM_BASE_URL": sandbox_url,
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": log_level,
    }
    if rate is not None:
        values["AMOCRM_RATE_LIMIT"] = str(rate)
    return values


def app_config(env: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The in-process app's config matching `settings(...)`, plus `extra`."""
    config: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"],
        "REDIS_URL": env["REDIS_URL"],
        "RATELIMIT_STORAGE_URI": "memory://",
        "INSTANCE_PATH": env["CRM_INSTANCE_PATH"],
        "SECRET_KEY": env["SECRET_KEY"],
        "CRM_ENCRYPTION_KEY": env["CRM_ENCRYPTION_KEY"],
        "CELERY_QUEUE": env["CELERY_QUEUE"],
        "AMOCRM_BASE_URL": env["AMOCRM_BASE_URL"],
    }
    if "AMOCRM_RATE_LIMIT" in env:
        config["AMOCRM_RATE_LIMIT"] = float(env["AMOCRM_RATE_LIMIT"])
    return config | extra


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate, and kill what does not exit within 20 seconds."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def celery_worker(
    env: dict[str, str], queue: str, logdir: str, *, name: str = "bench", concurrency: int = 2
) -> Iterator[Path]:
    """A real Celery worker on `queue`, up once it logs "ready."; yields its log file."""
    log = Path(logdir) / "worker.log"
    proc = subprocess.Popen(
        [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", queue,
         "-n", f"{name}-{os.getpid()}@%h", "--concurrency", str(concurrency), "-l", "INFO",
         "--without-gossip", "--without-mingle", "--logfile", str(log)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready." not in (log.read_text(errors="replace") if log.exists() else ""):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"celery worker exited; see {log}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError("celery worker did not start; see " + str(log))
            time.sleep(0.2)
        yield log
    finally:
        stop(proc)


@contextmanager
def gunicorn(module: str, env: dict[str, str], port: int) -> Iterator[str]:
    """The repository's gunicorn settings (gthread workers) minus access log and recycling."""
    run_env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            module,
            "-c",
            str(Path(__file__).parent / "gunicorn_bench.conf.py"),
        ],
        cwd=ROOT,
        env=run_env,
        stdout=open(os.environ.get("BENCH_GUNICORN_LOG", os.devnull), "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        yield url
    finally:
        stop(proc)
