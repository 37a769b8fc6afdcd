"""Celery tasks for sync (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging

from celery import shared_task
from flask import current_app

logger = logging.getLogger(__name__)


@shared_task(name="sync.run", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run(run_id: int) -> None:
    """Execute one SyncRun. A redelivered message for a finished or live run does nothing."""
    from crm_app.services.sync import run_sync

    # A database or broker outage mid-run leaves the run silent; sync.take_over_stale hands it
    # to a live worker once the outage is over, so the error only needs logging here.
    run_sync(int(run_id))


@shared_task(name="sync.schedule_incremental", ignore_result=True)
def schedule_incremental() -> list[int]:
    """Beat: an incremental sync for every connected owner with sync switched on.

    Only the first beat message of each interval slot acts (see ``claim_beat_slot``); an owner
    whose run is still going keeps that run, and a run whose worker died is re-enqueued.
    """
    from crm_app.services.sync import claim_beat_slot, schedule_all

    interval = float(current_app.config["SYNC_INTERVAL_SECONDS"])
    if not claim_beat_slot("sync.schedule_incremental", interval):
        return []
    run_ids = schedule_all("beat")
    logger.info("beat: %d sync runs scheduled or running", len(run_ids))
    return run_ids


@shared_task(name="sync.schedule_reconcile", ignore_result=True)
def schedule_reconcile() -> list[int]:
    """Beat: a reconciliation pass (id sets compared, deletions confirmed) for every owner."""
    from crm_app.services.sync import claim_beat_slot, schedule_all

    interval = float(current_app.config["RECONCILE_INTERVAL_SECONDS"])
    if not claim_beat_slot("sync.schedule_reconcile", interval):
        return []
    run_ids = schedule_all("reconcile")
    logger.info("beat: %d reconcile runs scheduled or running", len(run_ids))
    return run_ids


@shared_task(name="sync.take_over_stale", ignore_result=True)
def take_over_stale() -> list[int]:
    """Beat: runs silent for SYNC_STALE_SECONDS go to a live worker, from their checkpoint."""
    from crm_app.services.sync.runs import take_over_stale as take_over

    return take_over()
