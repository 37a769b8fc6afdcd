"""`make run`: migrate SQLite, prepare the demo, start sandbox + worker/beat + web, print the URL.

The three processes write their logs to `instance/logs/`; the terminal shows the banner (URLs
and the demo login) last, once everything answers, and after it only errors. A process that
dies early has the end of its log printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
DEMO_USER, DEMO_PASSWORD = "admin", "demo-sandbox-42"
# The demo account's Chats API channel (enter these in the "amoCRM chats" card) and bot.
DEMO_CHANNEL = "3f1d2c4b-5a69-4e7d-8c0b-1a2b3c4d5e6f"
DEMO_CHANNEL_SECRET = "d3m0c4a7s3cr3t0000111122223333444455556666"
DEMO_BOT_TOKEN = "100200:demo-bot-token-for-the-fake-telegram"
# After the banner, only lines that look like these reach the terminal.
_ALARMING = ("level=ERROR", "level=CRITICAL", '"level": "ERROR"', "Traceback", "[ERROR", "CRITICAL")


def wait_http(url: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except Exception:
            time.sleep(0.3)
    return False


class Piped:
    """A child process whose output goes to a log file; errors are echoed once `loud` is set."""

    loud = threading.Event()

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.ready = threading.Event()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        stream: IO[str] | None = self.proc.stdout
        if stream is None:
            return
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self.lines = [*self.lines[-40:], line]
                if " ready." in line:
                    self.ready.set()
                if self.loud.is_set() and any(mark in line for mark in _ALARMING):
                    sys.stdout.write(f"[{self.name}] {line}")
                    sys.stdout.flush()

    def tail(self) -> str:
        return "".join(self.lines[-40:])


def main() -> int:
    port = int(os.environ.get("PORT", "5000"))
    sandbox_port = int(os.environ.get("SANDBOX_PORT", "8100"))
    public = f"http://127.0.0.1:{port}"
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = dict(os.environ)
    env.setdefault("PUBLIC_URL", public)
    env.setdefault("AMOCRM_BASE_URL", sandbox)
    env.setdefault("TELEGRAM_API_BASE", sandbox)  # the sandbox's fake Bot API
    env.pop("REDIS_URL", None) if not os.environ.get("REDIS_URL") else None
    instance = Path(env.get("CRM_INSTANCE_PATH") or ROOT / "instance")
    logs = instance / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    flask = [str(BIN / "flask"), "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [*flask, "demo", "setup", "--username", DEMO_USER, "--password", DEMO_PASSWORD],
        cwd=ROOT,
        env=env,
        check=True,
    )
    sandbox_argv = [
        str(BIN / "python"),
        "-m",
        "crm_app.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(sandbox_port),
        "--subdomain",
        "demo",
        "--client-id",
        "demo-client-id",
        "--client-secret",
        "demo-client-secret",
        "--redirect-uri",
        f"{env['PUBLIC_URL']}/admin/crm/callback",
        "--contacts",
        "300",
        "--leads",
        "150",
        "--tasks",
        "80",
        "--chat-channel-id",
        DEMO_CHANNEL,
        "--chat-secret",
        DEMO_CHANNEL_SECRET,
        "--chat-hook-url",
        f"{env['PUBLIC_URL']}/webhooks/amojo/:scope_id",
    ]
    worker_argv = [
        str(BIN / "celery"),
        "-A",
        "workers.celery_app",
        "worker",
        "-B",
        "--loglevel",
        "INFO",
        "--concurrency",
        "2",
    ]
    web_argv = [
        str(BIN / "gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "wsgi:app",
    ]
    procs = [
        Piped("sandbox", sandbox_argv, env, logs),
        Piped("worker", worker_argv, env, logs),
        Piped("web", web_argv, env, logs),
    ]

    def stop(*_: object) -> None:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.terminate()
        for p in procs:
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    up = wait_http(f"{public}/healthz") and wait_http(f"{sandbox}/_sandbox/requests")
    worker = procs[1]
    # A busy machine can take a minute or more to start Celery; the banner waits for it.
    up = up and worker.ready.wait(240)
    dead = [p for p in procs if p.proc.poll() is not None]
    if up and not dead:
        Piped.loud.set()
        print("\n" + "=" * 64)
        print(f"  amoCRM integration:  {public}/admin/crm")
        print(f"  login:               {DEMO_USER} / {DEMO_PASSWORD}")
        print(f"  amoCRM sandbox:      {sandbox}  (demo account 'demo')")
        print(f"  chat channel:        id {DEMO_CHANNEL}")
        print(f"                       secret {DEMO_CHANNEL_SECRET}, bot token {DEMO_BOT_TOKEN}")
        print(f"  logs:                {logs}/{{web,worker,sandbox}}.log")
        print("  Ctrl-C stops everything.")
        print("=" * 64 + "\n", flush=True)
    else:
        for p in dead or procs:
            print(f"--- {p.name} ({p.log_path}) ---\n{p.tail()}", file=sys.stderr)
        print("something did not start; see the logs above", file=sys.stderr, flush=True)
    while all(p.proc.poll() is None for p in procs):
        time.sleep(1)
    for p in procs:
        if p.proc.poll() is not None:
            print(f"--- {p.name} stopped ---\n{p.tail()}", file=sys.stderr, flush=True)
    stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
