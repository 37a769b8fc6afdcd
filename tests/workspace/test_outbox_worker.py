"""The outbox with a real Celery worker: a sandbox outage, a kill -9, and nothing lost."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import Lead, OutboxStatus, OutboxWrite
from crm_app.services.workspace import Pending, update_lead
from tests.workspace.conftest import Owner, fault, heal


def _open_rows() -> int:
    db.session.expire_all()
    return db.session.scalar(
        select(func.count()).select_from(OutboxWrite).where(OutboxWrite.status == "pending")
    )


def _patched_prices(owner: Owner) -> dict[int, list[int]]:
    """Per deal, the prices amoCRM accepted, in the order it accepted them."""
    seen: dict[int, list[int]] = defaultdict(list)
    for entry in owner.server.requests_log(path_prefix="/api/v4/leads", method="PATCH"):
        if entry["status"] != 200:
            continue
        body = entry["json"]
        items = (
            body
            if isinstance(body, list)
            else [dict(body, id=int(entry["path"].rsplit("/", 1)[1]))]
        )
        for item in items:
            if "price" in item:
                seen[int(item["id"])].append(int(item["price"]))
    return seen


def test_outage_and_kill_9_lose_nothing_and_keep_the_order(synced: Owner, celery_worker) -> None:
    lead_ids = synced.ids("leads")[:6]
    # amoCRM answers 503 slowly: the worker is inside a request when it is killed.
    fault(synced.server, status=503, count=100_000, method="PATCH", delay=0.5)
    worker = celery_worker("victim", concurrency=1, pool="solo")
    made: dict[int, list[int]] = defaultdict(list)
    for round_no in range(3):
        for n, lead_id in enumerate(lead_ids):
            db.session.expire_all()
            seen = db.session.get(Lead, (synced.id, lead_id)).updated_at
            price = 1000 * (round_no + 1) + n
            outcome = update_lead(synced.id, lead_id, {"price": price}, seen)
            assert isinstance(outcome, Pending), outcome
            made[lead_id].append(price)
    assert _open_rows() == 18
    # The worker keeps trying while amoCRM is down...
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        e["status"] == 503 for e in synced.server.requests_log(method="PATCH")
    ):
        time.sleep(0.1)
    assert any(e["status"] == 503 for e in synced.server.requests_log(method="PATCH"))
    # ...and dies mid-request.
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert _open_rows() == 18

    heal(synced.server)
    synced.server.clear_requests()
    celery_worker("heir", concurrency=1)
    from workers.workspace import sweep

    sweep.apply()  # what the beat does every 15 s
    # The killed worker's owner lock expires within WORKSPACE_WRITE_TIMEOUT-based seconds.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _open_rows():
        time.sleep(0.3)
    assert _open_rows() == 0
    rows = db.session.scalars(select(OutboxWrite)).all()
    assert {r.status for r in rows} == {OutboxStatus.APPLIED}
    # Every edit reached amoCRM once, in the order it was made, and the last one stands.
    assert dict(_patched_prices(synced)) == dict(made)
    for lead_id, prices in made.items():
        assert synced.record("leads", lead_id)["price"] == prices[-1]
        db.session.expire_all()
        assert db.session.get(Lead, (synced.id, lead_id)).price == prices[-1]
