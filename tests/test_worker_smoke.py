"""A real Celery worker on the Redis broker runs tasks inside the app context."""

import time

import pytest
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Owner, SyncLog

pytestmark = pytest.mark.worker


def test_worker_runs_task(app, celery_worker):
    owner = Owner(name="acme")
    db.session.add(owner)
    db.session.commit()
    celery_worker("smoke", concurrency=1)
    app.extensions["celery"].send_task("tokens.ping", args=[owner.id])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        db.session.expire_all()
        if db.session.scalar(select(SyncLog).where(SyncLog.operation == "ping")):
            break
        time.sleep(0.2)
    row = db.session.scalar(select(SyncLog).where(SyncLog.operation == "ping"))
    assert row is not None and row.owner_id == owner.id
