"""Redis dies: the worker rides it out, the intake keeps answering, nothing is lost or doubled."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from crm_app.models import InboundRequest, Lead, SyncRun
from tests.outages import stack
from tests.outages.conftest import Deployment, mirror_matches, wait_run

pytestmark = [pytest.mark.worker, pytest.mark.slow]

OUTAGE = 8.0  # seconds Redis stays dead


def _start_full_sync(dep: Deployment) -> int:
    from crm_app.extensions import db
    from crm_app.services.sync import start_sync

    with dep.app.app_context():
        run_id = start_sync(dep.owner_id, full=True, trigger="manual").id
        db.session.remove()
    return run_id


def test_worker_survives_redis_dying_mid_sync(healthy: Deployment) -> None:
    dep = healthy
    worker_pid = dep.worker.pid
    run_id = _start_full_sync(dep)

    def paging() -> bool:
        run = dep.scalar(select(SyncRun).where(SyncRun.id == run_id))
        return run is not None and run.status == "running" and run.pages >= 2

    assert stack.wait_for(paging, 60), "the sync never got going"
    dep.redis.kill()
    time.sleep(OUTAGE)
    # The same worker process is still there while the broker is gone...
    assert dep.worker.alive() and dep.worker.pid == worker_pid, dep.worker.text()[-4000:]
    # ...and the web tier answers 2xx or 503, never 500.
    assert dep.get("/healthz").status_code == 200
    assert dep.get("/readyz").status_code == 503
    dep.redis.start()
    healed = time.monotonic()

    run = wait_run(dep, run_id, timeout=120)
    assert run is not None, "the run did not finish after Redis came back"
    assert run.status == "success", run.error
    assert dep.worker.alive() and dep.worker.pid == worker_pid
    # The run was finished by that same worker process, not handed to a new one.
    assert run.worker.endswith(f":{worker_pid}") or "main" in dep.worker.text()
    for entity in ("contacts", "leads", "tasks"):
        assert mirror_matches(dep, entity), entity
    assert time.monotonic() - healed < 120
    assert dep.get("/readyz").status_code == 200


def test_inbound_is_accepted_while_redis_is_down(healthy: Deployment) -> None:
    dep = healthy
    tag = f"redis-{int(time.time())}"
    leads_before = set(dep.server.account.tables["leads"].records)
    dep.redis.kill()
    try:
        answers = [dep.inbound(n, tag).status_code for n in range(20)]
        # The intake does not depend on Redis: stored in PostgreSQL and answered 202.
        assert answers == [202] * 20, answers
        assert dep.count(InboundRequest, InboundRequest.external_id.like(f"{tag}-%")) == 20
    finally:
        dep.redis.start()
    healed = time.monotonic()

    def created() -> bool:
        return (
            dep.count(
                InboundRequest,
                InboundRequest.external_id.like(f"{tag}-%"),
                InboundRequest.status == "created",
            )
            == 20
        )

    # Sent when the broker returns: the beat's sweep runs every 2 s here.
    assert stack.wait_for(created, 60, interval=0.25), "queued requests were not sent"
    drained = time.monotonic() - healed
    assert drained < 30 + 15
    lead_ids = [
        r[0]
        for r in dep.rows(
            select(InboundRequest.lead_id).where(InboundRequest.external_id.like(f"{tag}-%"))
        )
    ]
    # 0 lost, 0 duplicated: exactly 20 new deals in amoCRM, one per request.
    new_leads = set(dep.server.account.tables["leads"].records) - leads_before
    assert len(set(lead_ids)) == 20 and set(lead_ids) == new_leads
    assert dep.count(Lead, Lead.owner_id == dep.owner_id, Lead.id.in_(new_leads)) == 20


def test_worker_survives_redis_dying_while_tasks_finish(healthy: Deployment) -> None:
    """Tasks that end while the broker is gone must not take the worker with them."""
    dep = healthy
    worker_pid = dep.worker.pid
    tag = f"busy-{int(time.time())}"
    leads_before = set(dep.server.account.tables["leads"].records)
    # Each request's write to amoCRM takes 3 s, so they are mid-flight when Redis dies.
    dep.sandbox("POST", "faults", json={"path": "/api/v4/", "method": "POST", "status": 200,
                                          "delay": 3, "count": 4})  # fmt: skip
    assert [dep.inbound(n, tag).status_code for n in range(4)] == [202] * 4

    def started() -> bool:
        return (
            dep.count(
                InboundRequest, InboundRequest.external_id.like(f"{tag}-%"),
                InboundRequest.attempts >= 1,
            ) >= 2
        )  # fmt: skip

    assert stack.wait_for(started, 30, interval=0.05)
    dep.redis.kill()
    time.sleep(OUTAGE)
    assert dep.worker.alive() and dep.worker.pid == worker_pid, dep.worker.text()[-6000:]
    dep.redis.start()

    def created() -> bool:
        return (
            dep.count(
                InboundRequest, InboundRequest.external_id.like(f"{tag}-%"),
                InboundRequest.status == "created",
            ) == 4
        )  # fmt: skip

    assert stack.wait_for(created, 60, interval=0.25), "requests were not finished"
    new_leads = set(dep.server.account.tables["leads"].records) - leads_before
    assert len(new_leads) == 4
    assert dep.count(Lead, Lead.owner_id == dep.owner_id, Lead.id.in_(new_leads)) == 4
    assert dep.worker.alive() and dep.worker.pid == worker_pid
