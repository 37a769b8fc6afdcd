"""amoCRM switched our webhook off: the watchdog subscribes again and a sync fetches what was missed."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from crm_app.models import Lead, SyncLog, SyncRun
from tests.outages import stack
from tests.outages.conftest import Deployment, mirror_matches, wait_run

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_disabled_hook_is_restored_and_missed_changes_synced(healthy: Deployment) -> None:
    dep = healthy
    cfg = dep.server.config
    threshold, timeout = cfg.webhook_disable_threshold, cfg.webhook_timeout
    leads = sorted(dep.server.account.tables["leads"].records)[20:30]
    last_log = dep.scalar(select(SyncLog.id).order_by(SyncLog.id.desc()).limit(1)) or 0
    try:
        # Deliveries fail (amoCRM cannot reach us in time) until amoCRM disables the hook.
        cfg.webhook_disable_threshold, cfg.webhook_timeout = 3, 0.0005
        for n, lead_id in enumerate(leads[:6]):
            dep.sandbox("PATCH", f"leads/{lead_id}", json={"price": 81_000 + n})
        assert stack.wait_for(lambda: dep.hook()["disabled"], 20), "amoCRM never disabled it"
    finally:
        cfg.webhook_disable_threshold, cfg.webhook_timeout = threshold, timeout
    # Changes made while the hook is off produce no webhook at all.
    sent_before = len(dep.server.deliveries())
    for n, lead_id in enumerate(leads[6:]):
        dep.sandbox("PATCH", f"leads/{lead_id}", json={"price": 82_000 + n})
    healed = time.monotonic()

    def resubscribed() -> SyncLog | None:
        return dep.scalar(
            select(SyncLog).where(
                SyncLog.id > last_log,
                SyncLog.operation == "webhook_watchdog",
                SyncLog.status == "success",
            )
        )

    entry = stack.wait_for(resubscribed, 30, interval=0.25)
    assert entry is not None, "the watchdog did not act"
    assert entry.details["found"] == "disabled" and entry.details["resubscribed"] is True
    assert dep.hook()["disabled"] is False
    run = wait_run(dep, entry.details["run_id"], 60)
    assert run is not None and run.status == "success" and run.trigger == "webhook"
    assert not run.full  # an incremental sync, not a full one
    assert dep.count(SyncRun, SyncRun.id == run.id) == 1
    prices = dict(dep.rows(select(Lead.id, Lead.price).where(Lead.id.in_(leads))))
    assert [prices[i] for i in leads[:6]] == [81_000 + n for n in range(6)]
    assert [prices[i] for i in leads[6:]] == [82_000 + n for n in range(4)]
    assert mirror_matches(dep, "leads")
    assert time.monotonic() - healed < 60
    # No delivery was attempted for the changes made while the hook was off.
    assert all(d["ok"] for d in dep.server.deliveries()[sent_before:])
    # The Webhooks card tells the admin what happened.
    card = dep.signed_in().get(dep.web_url + "/admin/crm/ui/webhooks?lang=en", timeout=15)
    assert card.status_code == 200
    assert 'id="webhook-watchdog"' in card.text and 'data-found="disabled"' in card.text
    assert "amoCRM had switched the webhook off." in card.text
