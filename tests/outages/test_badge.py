"""A later success clears an old amoCRM error from the status badge."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from crm_app.amocrm.errors import AmoCRMBlocked, AmoCRMUnavailable
from crm_app.models import AmoConfig
from tests.outages.conftest import Deployment, wait_run

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _record(dep: Deployment, exc: Exception) -> None:
    from crm_app.extensions import db
    from crm_app.services.amo import record_api_failure

    with dep.app.app_context():
        record_api_failure(dep.owner_id, exc)
        db.session.remove()


def _sync(dep: Deployment) -> None:
    from crm_app.extensions import db
    from crm_app.services.sync import start_sync

    with dep.app.app_context():
        run_id = start_sync(dep.owner_id, trigger="manual").id
        db.session.remove()
    run = wait_run(dep, run_id, 60)
    assert run is not None and run.status == "success", run and run.error


@pytest.mark.parametrize(
    ("error", "status"),
    [(AmoCRMUnavailable("amoCRM did not answer", status=502), "connected"),
     (AmoCRMBlocked("blocked", status=403), "error")],
)  # fmt: skip
def test_a_later_success_clears_the_badge(
    healthy: Deployment, error: Exception, status: str
) -> None:
    dep = healthy
    browser = dep.signed_in()
    _record(dep, error)
    cfg = dep.scalar(select(AmoConfig).where(AmoConfig.owner_id == dep.owner_id))
    assert cfg.last_error and cfg.status == status
    badge = browser.get(dep.web_url + "/admin/crm/ui/status", timeout=15).text
    assert 'id="status-last-error"' in badge

    _sync(dep)  # a sync that reaches amoCRM and succeeds

    cfg = dep.scalar(select(AmoConfig).where(AmoConfig.owner_id == dep.owner_id))
    assert cfg.last_error is None and cfg.last_error_at is None
    assert cfg.status == "connected"
    badge = browser.get(dep.web_url + "/admin/crm/ui/status", timeout=15).text
    assert 'id="status-last-error"' not in badge and "badge-ok" in badge
