"""End to end: sandbox edits → real webhooks → the running app → a real Celery worker → mirror."""

from __future__ import annotations

import time

import pytest

from crm_app.models import InboxStatus, WebhookDelivery
from crm_app.services.webhooks import subscribe
from tests.webhooks.conftest import Owner, count, mirror, pending, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _follows(owner: Owner, entity: str, entity_id: int, check) -> bool:
    return bool(wait_until(lambda: check(mirror(owner.id, entity, entity_id)), timeout=20))


def test_sandbox_manager_edits_reach_the_mirror(owner: Owner, serve_app, celery_worker) -> None:
    base = serve_app()
    state = subscribe(owner.id)
    assert state["subscribed"], state
    assert state["url"].startswith(base)
    celery_worker("webhooks-e2e", concurrency=2)

    # Leads: a status change (the seed's leads:status), an edit, a new lead, a delete.
    lead_id = owner.ids("leads")[0]
    lead = owner.record("leads", lead_id)
    pipeline = owner.server.account.pipeline(lead["pipeline_id"])
    target = next(s.id for s in pipeline.statuses if s.type == 0 and s.id != lead["status_id"])
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"status_id": target})
    assert _follows(owner, "leads", lead_id, lambda r: r is not None and r.status_id == target)
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"status_id": 142})
    assert _follows(owner, "leads", lead_id, lambda r: r is not None and r.status_id == 142)
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"price": 4242, "name": "Сделка из песочницы"})
    assert _follows(owner, "leads", lead_id, lambda r: r is not None and r.price == 4242)
    assert mirror(owner.id, "leads", lead_id).name == "Сделка из песочницы"

    new_lead = owner.sandbox("POST", "leads", json={"name": "Новая", "price": 10}).json()["id"]
    assert _follows(owner, "leads", new_lead, lambda r: r is not None and r.name == "Новая")
    owner.sandbox("DELETE", f"leads/{new_lead}")
    assert _follows(owner, "leads", new_lead, lambda r: r is None)

    # Contacts.
    contact_id = owner.sandbox("POST", "contacts", json={"name": "Пётр"}).json()["id"]
    assert _follows(owner, "contacts", contact_id, lambda r: r is not None and r.name == "Пётр")
    owner.sandbox("PATCH", f"contacts/{contact_id}", json={"name": "Пётр Петров"})
    assert _follows(
        owner, "contacts", contact_id, lambda r: r is not None and r.name == "Пётр Петров"
    )
    owner.sandbox("DELETE", f"contacts/{contact_id}")
    assert _follows(owner, "contacts", contact_id, lambda r: r is None)

    # Tasks (`task` in the body, singular).
    due = int(time.time()) + 86400
    task_id = owner.sandbox(
        "POST",
        "tasks",
        json={
            "text": "Перезвонить",
            "complete_till": due,
            "entity_id": lead_id,
            "entity_type": "leads",
        },
    ).json()["id"]
    assert _follows(owner, "tasks", task_id, lambda r: r is not None and r.text == "Перезвонить")
    owner.sandbox(
        "PATCH", f"tasks/{task_id}", json={"is_completed": True, "result": {"text": "Готово"}}
    )
    assert _follows(owner, "tasks", task_id, lambda r: r is not None and r.is_completed)
    owner.sandbox("DELETE", f"tasks/{task_id}")
    assert _follows(owner, "tasks", task_id, lambda r: r is None)

    # Every delivery was acknowledged at the first attempt (within the sandbox's 2 s timeout,
    # or it would not be ok), stored, and applied. How fast: the webhooks rows of make bench.
    deliveries = owner.server.deliveries()
    assert deliveries and all(d["ok"] and d["attempt"] == 1 for d in deliveries), deliveries
    assert wait_until(lambda: pending(owner.id) == 0, timeout=20)
    stored = count(WebhookDelivery, WebhookDelivery.owner_id == owner.id)
    assert stored == len({d["request_id"] for d in deliveries})
    assert count(WebhookDelivery, WebhookDelivery.status == InboxStatus.FAILED) == 0
