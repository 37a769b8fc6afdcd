"""Outage benchmark: webhooks and inbound calls across a PostgreSQL stop and a Redis stop.

The deployment of the outage suite (``tests/outages/stack.py``): its own PostgreSQL cluster and
redis-server on free ports, gunicorn with the repository's settings, a Celery worker with
embedded beat, and the amoCRM sandbox. While the load runs, PostgreSQL is stopped for 10 s,
then (after it is back) Redis is killed for 10 s. The inbound client behaves like a real one:
on 503 it waits ``Retry-After`` and sends again with the same Idempotency-Key.

Reported: acknowledged (webhook deliveries answered 2xx, inbound calls finally answered 202),
applied (the change is in the mirror, the deal exists in amoCRM), duplicates (inbox rows per
delivered body, deals per request), and the time from the last heal until everything applied.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select

from benchmarks.__main__ import Row

AREA = "outages"
OUTAGE = 10.0
INTERVALS = {
    # Production defaults except the beat sweeps, which a busy deployment runs often anyway.
    "INBOUND_SWEEP_SECONDS": "5",
    "WEBHOOK_DRAIN_SECONDS": "5",
    "WEBHOOK_SPOOL_SWEEP_SECONDS": "1",
    "SYNC_INTERVAL_SECONDS": "86400",
    "RECONCILE_INTERVAL_SECONDS": "86400",
    "LOG_LEVEL": "WARNING",
}


def _inbound(dep: Any, n: int, tag: str, stats: dict[str, int]) -> None:
    """Send one request until it is accepted, honouring 503 + Retry-After like a real client."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            resp = dep.inbound(n, tag)
        except requests.RequestException:
            stats["errors"] += 1
            time.sleep(1)
            continue
        if resp.status_code == 202:
            stats["accepted"] += 1
            return
        if resp.status_code >= 500 and resp.status_code != 503:
            stats["http_500"] += 1
        stats["retried"] += 1
        time.sleep(min(float(resp.headers.get("Retry-After", 1)), 2.0))
    stats["given_up"] += 1


def _load(dep: Any, leads: list[int], tag: str, stats: dict[str, int], calls: int) -> None:
    """The sandbox edits one lead after another (each edit → a webhook); inbound calls between."""
    threads: list[threading.Thread] = []
    for n, lead_id in enumerate(leads):
        requests.patch(
            f"{dep.server.url}/_sandbox/leads/{lead_id}", json={"price": 500_000 + n}, timeout=10
        )
        if n % (len(leads) // calls) == 0 and len(threads) < calls:
            t = threading.Thread(target=_inbound, args=(dep, len(threads), tag, stats))
            t.start()
            threads.append(t)
        time.sleep(0.04)
    for t in threads:
        t.join()


def run(quick: bool) -> list[Row]:
    from crm_app.models import InboundRequest, Lead, WebhookDelivery
    from tests.outages.stack import deployment, wait_for

    deliveries, calls = (100, 20) if quick else (500, 100)
    base = Path(tempfile.mkdtemp(prefix="crm-bench-outages-"))
    with deployment(
        base, INTERVALS, contacts=300, leads=deliveries, tasks=50, webhook_time_scale=1 / 600
    ) as dep:
        tag = f"bench-{int(time.time())}"
        leads = sorted(dep.server.account.tables["leads"].records)[:deliveries]
        leads_before = set(dep.server.account.tables["leads"].records)
        seen_before = len(dep.server.deliveries())
        stats = {"accepted": 0, "retried": 0, "http_500": 0, "errors": 0, "given_up": 0}
        load = threading.Thread(target=_load, args=(dep, leads, tag, stats, calls))
        load.start()
        time.sleep(2)
        dep.pg.stop()
        time.sleep(OUTAGE)
        dep.pg.start()
        time.sleep(3)
        dep.redis.kill()
        time.sleep(OUTAGE)
        dep.redis.start()
        healed = time.monotonic()
        load.join()
        alive = all(p.alive() for p in dep.processes())

        finished: dict[str, float] = {}

        def applied() -> bool:
            prices = dict(dep.rows(select(Lead.id, Lead.price).where(Lead.id.in_(leads))))
            done = dep.count(
                InboundRequest,
                InboundRequest.external_id.like(f"{tag}-%"),
                InboundRequest.status == "created",
            )
            if done == calls:
                finished.setdefault("inbound", time.monotonic() - healed)
            if all(prices.get(i) == 500_000 + n for n, i in enumerate(leads)):
                finished.setdefault("webhooks", time.monotonic() - healed)
            return len(finished) == 2

        drained = wait_for(applied, 300, interval=0.5)
        drain_seconds = time.monotonic() - healed
        sent = dep.server.deliveries()[seen_before:]
        acked = sum(1 for d in sent if d["ok"])
        refused = Counter(str(d["status_code"] or d["error"]) for d in sent if not d["ok"])
        hashes = {hashlib.sha256(d["body"].encode("ascii")).hexdigest() for d in sent if d["ok"]}
        stored = dep.scalar(
            select(func.count()).where(
                WebhookDelivery.owner_id == dep.owner_id, WebhookDelivery.body_hash.in_(hashes)
            )
        )
        prices = dict(dep.rows(select(Lead.id, Lead.price).where(Lead.id.in_(leads))))
        changes_applied = sum(1 for n, i in enumerate(leads) if prices.get(i) == 500_000 + n)
        created = dep.count(
            InboundRequest,
            InboundRequest.external_id.like(f"{tag}-%"),
            InboundRequest.status == "created",
        )
        new_deals = len(set(dep.server.account.tables["leads"].records) - leads_before)
        duplicates = (stored - len(hashes)) + (new_deals - created)
    if drained and drain_seconds <= 30:
        shutil.rmtree(base, ignore_errors=True)
    else:  # keep the logs of a miss
        print(f"outage benchmark logs kept in {base}", file=sys.stderr)
    ack_pct = 100.0 * acked / len(sent) if sent else 0.0
    inbound_pct = 100.0 * stats["accepted"] / calls
    applied_pct = 100.0 * (changes_applied + created) / (deliveries + calls)
    return [
        Row(AREA, f"webhook deliveries acknowledged ({len(sent)} sent, PG and Redis stops)",
            f"{ack_pct:.1f}%" + (f" (not: {dict(refused)})" if refused else ""), "100%",
            ack_pct == 100.0),
        Row(AREA, f"inbound calls acknowledged ({calls}, {stats['retried']} 503-retries)",
            f"{inbound_pct:.1f}%", "100%", inbound_pct == 100.0 and stats["http_500"] == 0),
        Row(AREA, f"applied ({deliveries} changes + {calls} deals)", f"{applied_pct:.1f}%",
            "100%", applied_pct == 100.0),
        Row(AREA, "duplicates (inbox rows, deals)", str(duplicates), "0", duplicates == 0),
        Row(AREA, "time to drain after healing (webhooks / inbound)",
            f"{drain_seconds:.1f} s ({finished.get('webhooks', -1):.1f} / "
            f"{finished.get('inbound', -1):.1f})", "≤ 30 s", bool(drained) and drain_seconds <= 30),
        Row(AREA, "processes alive (gunicorn, worker + beat)", "yes" if alive else "NO", "yes",
            alive),
    ]  # fmt: skip
