"""What the beat schedules: incremental syncs and reconciliation passes, once per interval slot."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from crm_app.extensions import db
from crm_app.models import AmoConfig, AmoToken, ConnectionStatus
from crm_app.models.sync import BeatClaim
from crm_app.services.sync.runs import SyncError, start_sync

logger = logging.getLogger(__name__)


def claim_beat_slot(name: str, interval: float, *, now: float | None = None) -> bool:
    """True for the first caller of ``name`` in the current interval slot, False for the rest.

    Two beat processes (a misconfigured second host, a beat restarted next to a stuck one) each
    send the task once per interval; the database's primary key on (name, slot) lets exactly
    one of them act. Works on PostgreSQL and SQLite alike.
    """
    slot = int((time.time() if now is None else now) // max(interval, 1.0))
    db.session.add(BeatClaim(name=name[:64], slot=slot, claimed_at=datetime.now(UTC)))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        logger.info("beat task %s already ran in slot %s; skipping", name, slot)
        return False
    # Old claims are worthless; trim them now and then so the table stays tiny.
    db.session.execute(
        delete(BeatClaim).where(
            BeatClaim.name == name[:64],
            BeatClaim.claimed_at < datetime.now(UTC) - timedelta(days=2),
        )
    )
    db.session.commit()
    return True


def owners_to_sync() -> list[int]:
    """Owners with a connected account, stored tokens and at least one sync flag on."""
    rows = db.session.execute(
        select(AmoConfig.owner_id)
        .join(AmoToken, AmoToken.owner_id == AmoConfig.owner_id)
        .where(
            AmoConfig.status == ConnectionStatus.CONNECTED,
            AmoConfig.sync_contacts | AmoConfig.sync_leads | AmoConfig.sync_tasks,
        )
        .order_by(AmoConfig.owner_id)
    )
    return [r[0] for r in rows]


def schedule_all(trigger: str) -> list[int]:
    """Start (or find running) a sync for every owner due; returns the run ids."""
    run_ids = []
    for owner_id in owners_to_sync():
        try:
            run = start_sync(owner_id, trigger=trigger, full=trigger == "reconcile")
        except SyncError as exc:
            logger.info("owner %s not scheduled: %s", owner_id, exc)
            continue
        except Exception:
            logger.exception("could not schedule a sync for owner %s", owner_id)
            db.session.rollback()
            continue
        run_ids.append(run.id)
    return run_ids
