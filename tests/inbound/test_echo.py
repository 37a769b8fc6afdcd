"""Echo suppression: the webhooks of our own writes cost no re-read; others' changes still do."""

from __future__ import annotations

import pytest
import requests

from crm_app.models import Lead, WebhookDelivery
from crm_app.services.echo import is_own_echo, remember_own_write
from crm_app.services.webhooks import subscribe
from tests.inbound.conftest import mark_synced, post_inbound, wait_done, warm_fields
from tests.webhooks.conftest import count, pending, serve_app, wait_until  # noqa: F401

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _reads(server_url: str, since: int) -> list[dict[str, object]]:
    """GETs of leads/contacts the app made after log entry `since` (the sandbox's request log)."""
    log = requests.get(
        f"{server_url}/_sandbox/requests", params={"kind": "api", "since": str(since)}, timeout=5
    ).json()
    return [
        e
        for e in log
        if e["method"] == "GET"
        and str(e["path"]).split("?")[0].startswith(("/api/v4/leads", "/api/v4/contacts"))
    ]


def _mark(server_url: str) -> int:
    log = requests.get(f"{server_url}/_sandbox/requests", timeout=5).json()
    return int(log[-1]["seq"]) if log else 0


def test_remember_and_recognise(app, owner) -> None:
    remember_own_write(owner, "leads", 15000001, 1767000000)
    assert is_own_echo(owner, "leads", 15000001, 1767000000)
    assert not is_own_echo(owner, "leads", 15000001, 1767000001)  # a later version: not ours
    assert not is_own_echo(owner, "contacts", 15000001, 1767000000)
    assert not is_own_echo(owner + 1, "leads", 15000001, 1767000000)  # another owner's
    remember_own_write(owner, "leads", 15000001, 1767000000)  # twice is fine


def test_created_people_cause_no_rereads(
    app,
    client,
    sandbox,
    owner,
    api_key,
    worker,
    serve_app,  # noqa: F811
) -> None:
    serve_app()
    assert subscribe(owner)["subscribed"]
    warm_fields(owner)
    mark_synced(owner)
    worker()
    mark = _mark(sandbox.url)
    delivered_before = len(sandbox.deliveries())

    ids = []
    for n in range(3):
        body = {"channel": "widget", "external_id": f"echo-{n}", "name": f"Эхо {n}",
                "phone": f"+7916555000{n}", "message": "Привет"}  # fmt: skip
        resp = post_inbound(client, api_key, body)
        assert resp.status_code == 202
        ids.append(resp.json["id"])
    done = wait_done(ids)
    assert all(r.status == "created" and r.outcome == "new" for r in done), done
    # amoCRM announced the new leads and contacts; every delivery was stored and applied.
    assert len(sandbox.wait_for_deliveries(delivered_before + 3, timeout=10)) > delivered_before
    assert wait_until(lambda: count(WebhookDelivery) > 0 and pending(owner) == 0, timeout=20)
    assert _reads(sandbox.url, mark) == []
    lead = app.extensions["sqlalchemy"].session.get(Lead, (owner, done[0].lead_id))
    assert lead is not None and lead.name and lead.updated_at  # the mirror has our version

    # A manager's edit of the same deal is not ours: it is re-read.
    mark = _mark(sandbox.url)
    requests.patch(
        f"{sandbox.url}/_sandbox/leads/{done[0].lead_id}", json={"price": 777}, timeout=5
    ).raise_for_status()
    assert wait_until(lambda: len(_reads(sandbox.url, mark)) >= 1, timeout=20)
