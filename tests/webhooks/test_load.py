"""2 000 distinct deliveries + 500 redeliveries through gunicorn, with the broker down for a while.

The broker is a private redis-server (never the shared one on 6379): it is stopped for the middle
third of the run and started again empty, as after a crash without persistence.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import pytest
from celery import Celery
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import InboxStatus, Lead, SyncLog, WebhookDelivery
from tests.webhooks.conftest import Owner, count, event_keys, pending, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.slow]

DISTINCT = 2000
REDELIVERIES = 500
SAME_BYTES = 400  # the rest are the same change encoded in another key order
LEADS = 50
SENDERS = 8


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox(contacts=30, leads=LEADS + 10, tasks=20)


def _send_all(base: str, path: str, bodies: Iterable[bytes]) -> list[int]:
    """POST every body over keep-alive connections from a few threads; the status codes."""
    items = list(bodies)
    statuses: list[int] = [0] * len(items)
    cursor = iter(range(len(items)))
    guard = threading.Lock()
    host = urlsplit(base)

    def worker() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        while True:
            with guard:
                index = next(cursor, None)
            if index is None:
                break
            for attempt in range(3):
                try:
                    conn.request(
                        "POST",
                        path,
                        body=items[index],
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    statuses[index] = resp.status
                    break
                except (OSError, http.client.HTTPException):
                    # gunicorn recycles a worker now and then (max_requests): reconnect.
                    conn.close()
                    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
                    if attempt == 2:
                        raise
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_load_with_broker_outage_loses_nothing_and_applies_once(
    app, owner: Owner, gunicorn_app, celery_worker, private_redis
) -> None:
    rng = random.Random(2024)
    leads = owner.ids("leads")[:LEADS]
    env = {"REDIS_URL": private_redis.url}
    base = gunicorn_app(env=env)
    celery_worker("webhooks-load", concurrency=2, env=env)

    # The final state in "amoCRM": what the mirror must end up holding.
    for n, lead_id in enumerate(leads):
        owner.sandbox("PATCH", f"leads/{lead_id}", json={"price": 1000 + n})

    distinct: list[bytes] = []
    fields: list[dict[str, str]] = []
    for i in range(DISTINCT):
        item = {
            "id": str(leads[i % LEADS]),
            "price": str(i),
            "last_modified": str(1_700_000_000 + i),
        }
        fields.append(item)
        distinct.append(owner.body({"leads": {"update": [item]}}))
    schedule: list[bytes] = []
    redelivered = 0
    reencoded: set[int] = set()
    for i, body in enumerate(distinct):
        schedule.append(body)
        if redelivered < REDELIVERIES and i > 10 and rng.random() < 0.3:
            earlier = rng.randrange(i)
            if redelivered < SAME_BYTES:
                schedule.append(distinct[earlier])
            elif earlier not in reencoded:
                # Re-encoding one change twice would give equal bytes: one per change.
                reencoded.add(earlier)
                reordered = dict(reversed(list(fields[earlier].items())))
                schedule.append(owner.body({"leads": {"update": [reordered]}}))
            else:
                continue
            redelivered += 1
    assert redelivered == REDELIVERIES and len(schedule) == DISTINCT + REDELIVERIES

    third = len(schedule) // 3
    started = time.monotonic()
    statuses = _send_all(base, owner.path, schedule[:third])
    private_redis.stop()
    statuses += _send_all(base, owner.path, schedule[third : 2 * third])
    # Everything sent while the broker was down is stored already.
    assert count(WebhookDelivery) >= 2 * third - REDELIVERIES
    private_redis.start()
    statuses += _send_all(base, owner.path, schedule[2 * third :])
    assert statuses == [200] * len(schedule)
    print(f"sent {len(schedule)} in {time.monotonic() - started:.1f} s")

    # What beat would do every 30 s: sweep the inbox (and the kicker retries on its own).
    beat = Celery(broker=private_redis.url)

    def drained() -> bool:
        if pending(owner.id) == 0:
            return True
        beat.send_task("webhooks.drain_inbox", queue=app.config["CELERY_QUEUE"])
        return False

    assert wait_until(drained, timeout=120, step=3), f"{pending(owner.id)} still pending"
    beat.close()
    print(f"drained {time.monotonic() - started:.1f} s after the first send")

    rows = db.session.execute(
        select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    ).all()
    by_status = dict(rows)
    reencoded_count = REDELIVERIES - SAME_BYTES
    assert by_status == {InboxStatus.PROCESSED: DISTINCT, InboxStatus.DUPLICATE: reencoded_count}
    # Each distinct change has exactly one key, and the log counts each change once.
    assert event_keys(owner.id) == DISTINCT
    logged = sum(
        int(entry.details.get("changes", 0))
        for entry in db.session.scalars(
            select(SyncLog).where(SyncLog.operation == "webhook", SyncLog.status == "success")
        )
    )
    assert logged == DISTINCT
    # And the mirror holds amoCRM's state for every lead touched.
    db.session.expire_all()
    mirrored = {
        row.id: row.price
        for row in db.session.scalars(select(Lead).where(Lead.owner_id == owner.id))
    }
    assert mirrored == {lead_id: 1000 + n for n, lead_id in enumerate(leads)}
    # Coalescing kept the API traffic far below one read per delivery.
    reads = [
        r for r in owner.server.requests_log(path_prefix="/api/v4/leads") if r["method"] == "GET"
    ]
    assert 0 < len(reads) < DISTINCT / 10
