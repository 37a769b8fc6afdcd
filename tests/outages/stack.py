"""A whole deployment on free ports for fault injection: PostgreSQL, Redis, gunicorn, Celery.

Every server here is started by us (its own `initdb` cluster, its own `redis-server`), so a test
may stop, kill and restart them without touching the machine's shared services. Used by
`tests/outages/` and by the outage benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
