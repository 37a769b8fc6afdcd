"""Webhook benchmark: ingest throughput vs a bare Flask app, p99 acknowledgement, sandbox→mirror lag.

Everything runs on this machine over loopback: PostgreSQL database ``crm_bench_webhooks_<pid>``
(created and dropped), Redis db 14 (only our own queue/keys are touched), an in-process amoCRM
sandbox, two gunicorn servers started with the repository's gunicorn.conf.py (the app, and a bare
Flask app answering 200) and a real Celery worker. Load comes from ``wrk`` when installed
(Debian package ``wrk``), else from a Python keep-alive client.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from benchmarks.__main__ import Row
from benchmarks._support import (
    REDIS,
    bench_database,
    celery_worker,
    free_port,
    gunicorn,
    settings,
)

AREA = "webhooks"
SENDERS = 20  # concurrent senders for throughput and p99
LAG_RATE = 5.0  # sandbox changes per second


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# -- environment ------------------------------------------------------------------------------------


def _env(db_url: str, instance: str, queue: str, sandbox_url: str) -> dict[str, str]:
    level = os.environ.get("BENCH_LOG_LEVEL", "warning")
    return dict(os.environ) | settings(db_url, instance, queue, sandbox_url, log_level=level)


# -- load generation --------------------------------------------------------------------------------

_WRK_SCRIPT = """
local counter = 0
local prefix = "%(prefix)s"
local ids = 0
function setup(thread)
  ids = ids + 1
  thread:set("tid", ids)
end
function init(args)
  tid = tid or 0
end
request = function()
  counter = counter + 1
  local body = prefix .. "&leads%%5Bupdate%%5D%%5B0%%5D%%5Bid%%5D=" .. (1000 + counter %% 500)
    .. "&leads%%5Bupdate%%5D%%5B0%%5D%%5Blast_modified%%5D=" .. tid .. "0" .. counter .. "%(salt)s"
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
"""


def _wrk(url: str, path: str, prefix: str, seconds: float, connections: int) -> Load:
    """Closed-loop load with `connections` senders; every body distinct (no dedup shortcut)."""
    salt = str(random.randrange(10**6))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % {"prefix": prefix, "path": path, "salt": salt})
    try:
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:.0f}s", "--latency",
             "--timeout", "5s", "-s", script.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    total = re.search(r"(\d+) requests in", out)
    if total is None:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    requests = int(total.group(1))
    errors = 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match:
        errors += int(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        errors += sum(int(g) for g in match.groups())
    return Load(requests, seconds, _latency(out, "50%"), _latency(out, "99%"), errors)


def _latency(out: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _python_load(url: str, path: str, prefix: str, seconds: float, connections: int) -> Load:
    """Fallback without wrk: threads with keep-alive http.client connections."""
    host, port = url.removeprefix("http://").split(":")
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    guard = threading.Lock()
    counter = iter(range(10**9))
    salt = random.randrange(10**6)

    def sender() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        mine: list[float] = []
        while time.monotonic() < stop:
            with guard:
                n = next(counter)
            body = f"{prefix}&leads%5Bupdate%5D%5B0%5D%5Bid%5D={1000 + n % 500}&leads%5Bupdate%5D%5B0%5D%5Blast_modified%5D={n}{salt}"
            started = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    path,
                    body=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                ok = False
            mine.append(time.perf_counter() - started)
            if not ok:
                with guard:
                    errors[0] += 1
        with guard:
            latencies.extend(mine)

    threads = [threading.Thread(target=sender) for _ in range(connections)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - begun
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return Load(len(latencies), elapsed, p(0.50), p(0.99), errors[0])


def _load(url: str, path: str, prefix: str, seconds: float, connections: int) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, path, prefix, seconds, connections)
    return _python_load(url, path, prefix, seconds, connections)


# -- the scenario -----------------------------------------------------------------------------------


def _setup_owner(env: dict[str, str], sandbox: Any, public_url: str) -> dict[str, Any]:
    """Schema, an owner connected to the sandbox through a real code exchange, its token."""
    os.environ.update({k: env[k] for k in ("CRM_INSTANCE_PATH",)})
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.models import Owner
    from crm_app.services.webhooks import ensure_webhook_token
    from testkit.sandbox_link import connect_owner_to_sandbox

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"],
            "REDIS_URL": env["REDIS_URL"],
            "INSTANCE_PATH": env["CRM_INSTANCE_PATH"],
            "SECRET_KEY": env["SECRET_KEY"],
            "CRM_ENCRYPTION_KEY": env["CRM_ENCRYPTION_KEY"],
            "CELERY_QUEUE": env["CELERY_QUEUE"],
            "AMOCRM_BASE_URL": sandbox.url,
            "PUBLIC_URL": public_url,
        }
    )
    ctx = app.app_context()
    ctx.push()
    db.create_all()
    owner = Owner(name="bench")
    db.session.add(owner)
    db.session.commit()
    connect_owner_to_sandbox(owner.id, sandbox)
    acc = sandbox.account
    token = ensure_webhook_token(owner.id)
    prefix = urlencode(
        {
            "account[subdomain]": acc.subdomain,
            "account[id]": str(acc.id),
            "account[_links][self]": f"https://{acc.subdomain}.amocrm.ru",
        }
    )
    return {"app": app, "ctx": ctx, "owner_id": owner.id, "token": token, "prefix": prefix}


def _throughput(
    env: dict[str, str], setup: dict[str, Any], seconds: float, rounds: int
) -> list[Row]:
    """Pairs of short runs, bare and webhook back to back in alternating order.

    Other processes on a small machine come and go; a ratio taken within each pair and then
    the median over pairs is far steadier than two long runs minutes apart.
    """
    path = f"/webhooks/amocrm/{setup['token']}"
    # No worker in this phase: the kicks queue tasks in Redis, as they would with a busy worker.
    pairs: list[tuple[Load, Load]] = []
    with (
        gunicorn("wsgi:app", env, free_port()) as app_url,
        gunicorn("benchmarks._bare_app:app", env, free_port()) as bare_url,
    ):
        _load(app_url, path, setup["prefix"], 1, 4)  # warm-up: connections, imports, caches
        _load(bare_url, path, setup["prefix"], 1, 4)
        for n in range(rounds):
            if n % 2:
                app = _load(app_url, path, setup["prefix"], seconds, SENDERS)
                bare = _load(bare_url, path, setup["prefix"], seconds, SENDERS)
            else:
                bare = _load(bare_url, path, setup["prefix"], seconds, SENDERS)
                app = _load(app_url, path, setup["prefix"], seconds, SENDERS)
            pairs.append((app, bare))
    ratio = statistics.median(a.rps / b.rps if b.rps else 0.0 for a, b in pairs)
    app_rps = statistics.median(a.rps for a, _ in pairs)
    bare_rps = statistics.median(b.rps for _, b in pairs)
    p99 = statistics.median(a.p99_ms for a, _ in pairs)
    worst = max(a.p99_ms for a, _ in pairs)
    errors = sum(a.errors for a, _ in pairs)
    tool = "wrk" if shutil.which("wrk") else "python"
    label = f"{len(pairs)} pairs of {seconds:.0f} s, {SENDERS} senders, {tool}"
    return [
        Row(AREA, f"ingest rps, webhook endpoint (median; {label})", f"{app_rps:.0f}", "—", errors == 0),
        Row(AREA, f"ingest rps, bare Flask 200 (median; {label})", f"{bare_rps:.0f}", "—", True),
        Row(AREA, "ingest throughput vs bare Flask (median of pair ratios)", f"{ratio:.0%}", ">= 50%", ratio >= 0.5 and errors == 0),
        Row(AREA, f"p99 acknowledgement at {SENDERS} senders (median; worst pair {worst:.0f} ms)", f"{p99:.1f} ms", "< 200 ms", p99 < 200),
    ]  # fmt: skip


def _durable_ratio(env: dict[str, str], setup: dict[str, Any], seconds: float) -> list[Row]:
    """For the record: the same comparison with an fsync before every acknowledgement."""
    rows = _throughput(dict(env, WEBHOOK_SYNC_COMMIT="1"), setup, seconds, 6)
    ratio = next(r for r in rows if r.metric.startswith("ingest throughput"))
    return [
        Row(AREA, "  same with WEBHOOK_SYNC_COMMIT=1 (fsync before 200; informational)", ratio.value, "—", True)
    ]  # fmt: skip


def _lag(env: dict[str, str], setup: dict[str, Any], sandbox: Any, seconds: float) -> list[Row]:
    """5 lead changes a second in the sandbox; how long until each is in the mirror."""
    import requests
    from sqlalchemy import select

    from crm_app.extensions import db
    from crm_app.models import InboxStatus, Lead, WebhookDelivery
    from crm_app.services.webhooks import subscribe

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    setup["app"].config["PUBLIC_URL"] = public
    run_env = dict(env, PUBLIC_URL=public)
    leads = sorted(sandbox.account.tables["leads"].records)
    total = int(seconds * LAG_RATE)
    changes: dict[int, tuple[float, int]] = {}
    seen: dict[int, float] = {}
    with (
        gunicorn("wsgi:app", run_env, port),
        celery_worker(run_env, env["CELERY_QUEUE"], env["CRM_INSTANCE_PATH"]),
    ):
        state = subscribe(setup["owner_id"])
        if not state.get("subscribed"):
            return [
                Row(AREA, "sandbox change → mirror, max lag", "subscribe failed", "< 5 s", False)
            ]
        done = threading.Event()

        def poll() -> None:
            with setup["app"].app_context():
                _poll()

        def _poll() -> None:
            while not done.is_set() or len(seen) < len(changes):
                db.session.expire_all()
                wanted = {lid: price for lid, (_, price) in changes.items() if lid not in seen}
                if wanted:
                    rows = db.session.execute(
                        select(Lead.id, Lead.price).where(
                            Lead.owner_id == setup["owner_id"], Lead.id.in_(list(wanted))
                        )
                    ).all()
                    now = time.monotonic()
                    for lead_id, price in rows:
                        if price == wanted[lead_id]:
                            seen[lead_id] = now
                db.session.rollback()
                if done.is_set() and time.monotonic() > deadline:
                    return
                time.sleep(0.02)

        deadline = time.monotonic() + seconds + 30
        poller = threading.Thread(target=poll, daemon=True)
        session = requests.Session()
        started = time.monotonic()
        poller_started = False
        for n in range(total):
            due = started + n / LAG_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            lead_id = leads[n % len(leads)]
            price = 500_000 + n
            changes[lead_id] = (time.monotonic(), price)
            session.patch(
                f"{sandbox.url}/_sandbox/leads/{lead_id}", json={"price": price}, timeout=5
            ).raise_for_status()
            if not poller_started:
                poller.start()
                poller_started = True
        done.set()
        poller.join(timeout=40)
        lags = sorted(seen[lid] - changes[lid][0] for lid in seen)
        missing = len(changes) - len(seen)
        deliveries = sandbox.deliveries()
        failed_rows = db.session.scalar(
            select(db.func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == InboxStatus.FAILED)
        )
    max_lag = lags[-1] if lags else float("inf")
    p50 = statistics.median(lags) if lags else float("inf")
    acks = [d["duration_ms"] for d in deliveries]
    ok = missing == 0 and max_lag < 5.0 and not failed_rows
    return [
        Row(AREA, f"sandbox change → mirror at {LAG_RATE:.0f}/s, max lag ({total} changes)", f"{max_lag:.2f} s", "< 5 s", ok),
        Row(AREA, "sandbox change → mirror, median lag", f"{p50:.2f} s", "—", True),
        Row(AREA, "changes never seen in the mirror", str(missing), "0", missing == 0),
        Row(AREA, "sandbox webhook deliveries: max ack time", f"{max(acks) if acks else 0:.0f} ms", "< 2000 ms",
            bool(acks) and max(acks) < 2000 and all(d["ok"] for d in deliveries)),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    """Benchmark rows for `make bench` (quick: shorter load windows)."""
    import redis

    from crm_app.sandbox.server import SandboxServer

    queue = f"crm-bench-webhooks-{os.getpid()}"
    seconds, rounds, lag_seconds = (2.0, 4, 10.0) if quick else (3.0, 10, 30.0)
    instance = tempfile.mkdtemp(prefix="crm-bench-webhooks-")
    sandbox = SandboxServer(port=0, contacts=50, leads=200, tasks=20, quiet=True).start()
    rows: list[Row] = []
    try:
        with bench_database("webhooks") as db_url:
            env = _env(db_url, instance, queue, sandbox.url)
            setup = _setup_owner(env, sandbox, "http://127.0.0.1:1")
            try:
                rows += _throughput(env, setup, seconds, rounds)
                if not quick:
                    rows += _durable_ratio(env, setup, seconds)
                _clear_inbox(setup)
                rows += _lag(env, setup, sandbox, lag_seconds)
            finally:
                from crm_app.extensions import db

                db.session.remove()
                db.engine.dispose()
                setup["ctx"].pop()
    except Exception as exc:  # a broken environment is a failed row, not a crashed table
        print(f"webhooks benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        rows.append(Row(AREA, "benchmark run", f"failed: {type(exc).__name__}", "completes", False))
    finally:
        sandbox.stop()
        client = redis.Redis.from_url(REDIS)
        with suppress(Exception):
            client.delete(queue, *client.keys("crm:webhooks:*"))
        shutil.rmtree(instance, ignore_errors=True)
    return rows


def _clear_inbox(setup: dict[str, Any]) -> None:
    """The throughput phase left thousands of synthetic rows; the lag phase starts clean."""
    import redis
    from sqlalchemy import delete

    from crm_app.extensions import db
    from crm_app.models import WebhookDelivery

    db.session.execute(delete(WebhookDelivery))
    db.session.commit()
    with suppress(Exception):
        client = redis.Redis.from_url(REDIS)
        # The queued flag too: it would hold back the first kicks of the next phase.
        client.delete(setup["app"].config["CELERY_QUEUE"], *client.keys("crm:webhooks:*"))
