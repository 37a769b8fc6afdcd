"""Tasks queued with `services.queue.enqueue` run: by a real worker, or inline in eager mode."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Owner, SyncLog
from crm_app.services.queue import enqueue
from tests import worker_tasks  # noqa: F401  (registers tests.ping in this process too)


def _pings(owner_id: int) -> list[SyncLog]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(SyncLog).where(SyncLog.operation == "ping", SyncLog.owner_id == owner_id)
        )
    )


@pytest.fixture
def owner(app: Flask) -> Owner:
    row = Owner(name="acme")
    db.session.add(row)
    db.session.commit()
    return row


@pytest.fixture
def eager(app: Flask) -> Iterator[None]:
    celery = app.extensions["celery"]
    celery.conf.task_always_eager = True
    yield
    celery.conf.task_always_eager = False


@pytest.mark.worker
def test_worker_runs_enqueued_task(app: Flask, owner: Owner, celery_worker) -> None:
    celery_worker("smoke", concurrency=1)
    enqueue("tests.ping", owner.id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _pings(owner.id):
        time.sleep(0.2)
    assert len(_pings(owner.id)) == 1


def test_eager_mode_runs_the_task_inline(app: Flask, owner: Owner, eager: None) -> None:
    enqueue("tests.ping", owner.id, countdown=30)
    assert len(_pings(owner.id)) == 1


def test_eager_mode_passes_the_task_error_on(app: Flask, eager: None) -> None:
    with pytest.raises(KeyError):
        enqueue("tests.no-such-task")


def test_broker_down_raises_for_the_caller_to_handle(base_config: dict[str, object]) -> None:
    from kombu.exceptions import OperationalError

    from crm_app import create_app

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    app = create_app({**base_config, "REDIS_URL": dead, "RATELIMIT_STORAGE_URI": "memory://"})
    with app.app_context(), pytest.raises(OperationalError):
        enqueue("tests.ping", 1)
