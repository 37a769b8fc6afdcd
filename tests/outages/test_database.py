"""PostgreSQL stops for 10 s: webhooks are spooled and acknowledged, every route answers 503
(never 500), /readyz fails while /healthz stays up, queued work waits the outage out."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from sqlalchemy import select

from crm_app.models import AmoConfig, InboundRequest, Lead, WebhookDelivery
from tests.outages import stack
from tests.outages.conftest import Deployment, mirror_matches

pytestmark = [pytest.mark.worker, pytest.mark.slow]

OUTAGE = 10.0
DRAIN = 30.0  # after healing, everything accepted is applied within this


def _spool_files(dep: Deployment) -> list[str]:
    folder = dep.base / "instance" / "webhook-spool"
    return [p.name for p in folder.glob("*.jsonl")] if folder.exists() else []


def _token(dep: Deployment) -> str:
    return str(
        dep.scalar(select(AmoConfig.webhook_token).where(AmoConfig.owner_id == dep.owner_id))
    )


def _view_delivery(dep: Deployment, body: str, token: str) -> int:
    """A delivery through the Flask view (fast path off) of the test process's own app."""
    dep.app.config["WEBHOOK_FAST_PATH"] = False
    try:
        with dep.app.test_client() as client:
            resp = client.post(
                f"/webhooks/amocrm/{token}",
                data=body.encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
    finally:
        dep.app.config["WEBHOOK_FAST_PATH"] = True
    return resp.status_code


def test_postgres_outage_webhooks_pages_and_probes(healthy: Deployment) -> None:
    dep = healthy
    browser = dep.signed_in()
    leads = sorted(dep.server.account.tables["leads"].records)[:10]
    seen_before = len(dep.server.deliveries())
    token = _token(dep)
    dep.pg.stop()
    stopped = time.monotonic()
    try:
        for n, lead_id in enumerate(leads):
            dep.sandbox("PATCH", f"leads/{lead_id}", json={"price": 70_000 + n})

        # Probes: liveness up, readiness down.
        assert dep.get("/healthz").status_code == 200
        ready = dep.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
        # Pages and APIs: 503 with Retry-After, never 500.
        page = browser.get(dep.web_url + "/admin/crm?lang=en", timeout=15)
        assert page.status_code == 503 and page.headers["Retry-After"].isdigit()
        assert 'id="database-unavailable"' in page.text and "Database unavailable" in page.text
        status = browser.get(dep.web_url + "/admin/crm/status", timeout=15)
        assert status.status_code == 503 and "Retry-After" in status.headers
        assert status.headers["Content-Type"].startswith("application/problem+json")
        inbound = dep.inbound(0, f"pgdown-{int(time.time())}")
        assert inbound.status_code == 503 and "Retry-After" in inbound.headers
        assert dep.get("/login").status_code in (200, 503)

        # amoCRM's deliveries were all acknowledged: none failed, the hook stays on.
        def delivered() -> list[dict]:
            mine = dep.server.deliveries()[seen_before:]
            return mine if len(mine) >= len(leads) else []

        during = stack.wait_for(delivered, OUTAGE)
        assert during, "the sandbox sent no webhooks"
        assert all(d["ok"] and d["status_code"] == 200 for d in during), during
        assert _spool_files(dep), "nothing was spooled"
        # The Flask view spools too (the fast path is one of two ways in); amoCRM's copy of
        # the same bytes must end up as one inbox row.
        assert _view_delivery(dep, during[0]["body"], token) == 200
        assert any(f"spool-{os.getpid()}-" in name for name in _spool_files(dep))
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
    finally:
        dep.pg.start()
    healed = time.monotonic()

    def drained() -> bool:
        if _spool_files(dep):
            return False
        pending = dep.count(WebhookDelivery, WebhookDelivery.status == "pending")
        prices = dict(dep.rows(select(Lead.id, Lead.price).where(Lead.id.in_(leads))))
        return pending == 0 and all(prices.get(i) == 70_000 + n for n, i in enumerate(leads))

    assert stack.wait_for(drained, DRAIN, interval=0.25), "spooled deliveries were not applied"
    assert time.monotonic() - healed < DRAIN
    # 0 lost, 0 duplicated: one inbox row per delivery amoCRM made, the mirror equals amoCRM.
    sent = dep.server.deliveries()[seen_before:]
    hashes = {hashlib.sha256(d["body"].encode("ascii")).hexdigest() for d in sent}
    rows = dep.rows(
        select(WebhookDelivery.body_hash).where(
            WebhookDelivery.owner_id == dep.owner_id, WebhookDelivery.body_hash.in_(hashes)
        )
    )
    assert sorted(r[0] for r in rows) == sorted(hashes)
    assert mirror_matches(dep, "leads")
    assert dep.hook()["disabled"] is False
    assert dep.get("/readyz").status_code == 200
    assert browser.get(dep.web_url + "/admin/crm", timeout=15).status_code == 200


def test_inbound_tasks_wait_out_a_database_outage(healthy: Deployment) -> None:
    """Messages that reach the worker while the database is down are retried, not dropped."""
    from crm_app.extensions import db
    from crm_app.services.inbound.intake import submit

    dep = healthy
    tag = f"dbdown-{int(time.time())}"
    leads_before = set(dep.server.account.tables["leads"].records)
    with dep.app.app_context():
        ids = [
            submit(
                dep.owner_id,
                {"channel": "widget", "external_id": f"{tag}-{n}", "name": f"{tag} {n}"},
                enqueue_now=False,
            ).id
            for n in range(5)
        ]
        db.session.remove()
    celery = dep.app.extensions["celery"]
    dep.pg.stop()
    try:
        for request_id in ids:
            celery.send_task("inbound.process", args=[request_id])
        time.sleep(OUTAGE)
    finally:
        dep.pg.start()
    healed = time.monotonic()

    def created() -> bool:
        return (
            dep.count(
                InboundRequest, InboundRequest.id.in_(ids), InboundRequest.status == "created"
            )
            == 5
        )

    assert stack.wait_for(created, DRAIN, interval=0.25), "requests waited for the stale sweep"
    assert time.monotonic() - healed < DRAIN
    new_leads = set(dep.server.account.tables["leads"].records) - leads_before
    lead_ids = {
        r[0] for r in dep.rows(select(InboundRequest.lead_id).where(InboundRequest.id.in_(ids)))
    }
    assert len(new_leads) == 5 and lead_ids == new_leads
    assert dep.count(Lead, Lead.owner_id == dep.owner_id, Lead.id.in_(new_leads)) == 5
