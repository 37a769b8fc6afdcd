"""`make run`: migrate SQLite, prepare the demo, start sandbox + worker/beat + web, print the URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
DEMO_USER, DEMO_PASSWORD = "admin", "demo-sandbox-42"


def wait_http(url: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except Exception:
            time.sleep(0.3)
    return False


def main() -> int:
    port = int(os.environ.get("PORT", "5000"))
    sandbox_port = int(os.environ.get("SANDBOX_PORT", "8100"))
    public = f"http://127.0.0.1:{port}"
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = dict(os.environ)
    env.setdefault("PUBLIC_URL", public)
    env.setdefault("AMOCRM_BASE_URL", sandbox)
    env.pop("REDIS_URL", None) if not os.environ.get("REDIS_URL") else None
    flask = [str(BIN / "flask"), "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [*flask, "demo", "setup", "--username", DEMO_USER, "--password", DEMO_PASSWORD],
        cwd=ROOT,
        env=env,
        check=True,
    )
    procs = [
        subprocess.Popen(
            [
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
            ],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "workers.celery_app",
                "worker",
                "-B",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
            ],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=env,
        ),
    ]

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_http(f"{public}/healthz") and wait_http(f"{sandbox}/_sandbox/requests"):
        print("\n" + "=" * 64)
        print(f"  amoCRM integration:  {public}/admin/crm")
        print(f"  login:               {DEMO_USER} / {DEMO_PASSWORD}")
        print(f"  amoCRM sandbox:      {sandbox}  (demo account 'demo')")
        print("  Ctrl-C stops everything.")
        print("=" * 64 + "\n", flush=True)
    else:
        print("something did not start; see the output above", file=sys.stderr)
    while all(p.poll() is None for p in procs):
        time.sleep(1)
    stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
