"""Starting a sync on request (the sync card's buttons and `POST /admin/crm/sync`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from crm_app.services.connection import is_connected
from crm_app.services.sync.progress import RunView, run_view
from crm_app.services.sync.runs import SyncError, start_sync

logger = logging.getLogger(__name__)


class SyncRefused(Exception):
    """The sync was not started; ``reason`` says why and ``status`` is the HTTP answer."""

    def __init__(self, reason: str, status: int, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.status = status
        self.detail = detail


NOT_CONNECTED = "not_connected"
NOTHING_TO_SYNC = "nothing_to_sync"
QUEUE_DOWN = "queue_down"


def request_sync(
    owner_id: int,
    *,
    trigger: str,
    entities: Sequence[str] | None = None,
    full: bool = False,
) -> RunView:
    """Queue a run (or return the one already running); refused while amoCRM is not connected,
    so no run is queued that can only fail."""
    if not is_connected(owner_id):
        raise SyncRefused(NOT_CONNECTED, 409)
    try:
        run = start_sync(
            owner_id, entities=list(entities) if entities else None, full=full, trigger=trigger
        )
    except SyncError as exc:  # e.g. every entity is switched off in the settings
        raise SyncRefused(NOTHING_TO_SYNC, 409, str(exc)) from exc
    except Exception as exc:  # the broker refused the task; the service marked the run failed
        logger.exception("owner %s: sync could not be queued", owner_id)
        raise SyncRefused(QUEUE_DOWN, 503) from exc
    logger.info("owner %s: sync run %s requested (%s)", owner_id, run.id, trigger)
    return run_view(run)
