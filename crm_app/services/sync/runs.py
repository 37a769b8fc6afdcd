"""SyncRun lifecycle: start (one active run per owner), claim with a lease, checkpoint, finish."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from flask import current_app
from sqlalchemy import Connection, CursorResult, Engine, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from crm_app.extensions import db
from crm_app.models import AmoConfig, RunStatus, SyncCursor, SyncLog, SyncRun
from crm_app.services import queue
from crm_app.services.locks import LockTimeout, named_lock
from crm_app.services.sync.checkpoint import Checkpoint
from crm_app.services.sync.upsert import ENTITIES

logger = logging.getLogger(__name__)

# Who asked: shown in the log. "reconcile" also changes what the run does (see engine).
TRIGGERS = ("manual", "beat", "cli", "api", "connect", "webhook", "reconcile")
runs_table = SyncRun.__table__


class LeaseLost(RuntimeError):
    """Another worker took the run over (ours looked dead); stop without writing."""


class SyncError(RuntimeError):
    """A run could not be started (bad input, no configuration)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def stale_after() -> timedelta:
    """How long a running run may go without a heartbeat before another worker takes it over."""
    return timedelta(seconds=float(current_app.config.get("SYNC_STALE_SECONDS", 600)))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


# What callers may name: the mirrored entities, plus `notes` for the notes of both kinds.
ENTITY_NAMES: tuple[str, ...] = ("contacts", "leads", "tasks", "notes")


def enabled_entities(owner_id: int) -> list[str]:
    """The entities the owner's sync flags switch on; notes come with their leads/contacts."""
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is None:
        return []
    flags = {
        "contacts": cfg.sync_contacts,
        "leads": cfg.sync_leads,
        "tasks": cfg.sync_tasks,
        "lead_notes": cfg.sync_leads,
        "contact_notes": cfg.sync_contacts,
    }
    return [e for e in ENTITIES if flags[e]]


def normalize_entities(entities: Sequence[str] | None, owner_id: int) -> list[str]:
    if entities is None:
        return enabled_entities(owner_id)
    wanted: list[str] = []
    for entity in entities:
        if entity == "all":
            return list(ENTITIES)
        if entity == "notes":
            wanted.extend(("lead_notes", "contact_notes"))
            continue
        if entity not in ENTITIES:
            raise SyncError(f"unknown entity {entity!r}: use {', '.join(ENTITY_NAMES)} or all")
        wanted.append(entity)
    return [e for e in ENTITIES if e in wanted]


def active_run(owner_id: int) -> SyncRun | None:
    """The owner's queued or running run, read fresh (workers change it behind our session)."""
    return db.session.scalar(
        select(SyncRun)
        .where(SyncRun.owner_id == owner_id, SyncRun.status.in_(RunStatus.ACTIVE))
        .execution_options(populate_existing=True)
    )


def is_stale(run: SyncRun, now: datetime | None = None) -> bool:
    """True when the run's worker stopped heartbeating (killed, lost) or its task got lost."""
    now = now or utcnow()
    seen = run.heartbeat_at or run.started_at or run.created_at
    return seen is not None and now - seen > stale_after()


def _inherited_checkpoint(owner_id: int, entities: list[str], full: bool) -> dict[str, Any]:
    """Progress of the owner's last run if it failed part-way, so a new run goes on from there."""
    last = db.session.scalar(
        select(SyncRun)
        .where(SyncRun.owner_id == owner_id, SyncRun.status.not_in(RunStatus.ACTIVE))
        .order_by(SyncRun.id.desc())
        .limit(1)
    )
    if last is None or last.status != RunStatus.ERROR or bool(last.full) != full:
        return {}
    if last.trigger == "reconcile" or not last.checkpoint:
        return {}
    max_age = timedelta(seconds=float(current_app.config.get("SYNC_RESUME_WINDOW_SECONDS", 86400)))
    if last.created_at is None or utcnow() - last.created_at > max_age:
        return {}
    return Checkpoint.from_json(last.checkpoint).only(entities).to_json()


def start_sync(
    owner_id: int,
    *,
    entities: Sequence[str] | None = None,
    full: bool = False,
    trigger: str = "manual",
    enqueue: bool = True,
) -> SyncRun:
    """Queue a sync for the owner and enqueue ``sync.run``; or return the owner's active run.

    One run per owner: a unique partial index on active runs makes concurrent callers race in
    the database, and the losers get the winner's run. An active run whose worker died (no
    heartbeat for SYNC_STALE_SECONDS) is re-enqueued so a live worker takes it over.
    ``enqueue=False`` (the CLI's foreground mode) creates the run without a Celery task.
    """
    if trigger not in TRIGGERS:
        raise SyncError(f"unknown trigger {trigger!r}")
    wanted = normalize_entities(entities, owner_id)
    if not wanted:
        raise SyncError("nothing to sync: every entity is switched off in the settings")
    if trigger == "reconcile":
        full = True
    try:
        lock = named_lock(f"sync-start-{owner_id}", ttl=30, wait=15)
        with lock:
            run, created, requeue = _create_or_find(owner_id, wanted, full, trigger)
    except LockTimeout:
        # Somebody else is starting one right now: theirs is the run we would return anyway.
        run, created, requeue = _create_or_find(owner_id, wanted, full, trigger)
    if (created or requeue) and enqueue:
        _enqueue(run)
    return run


def _create_or_find(
    owner_id: int, entities: list[str], full: bool, trigger: str
) -> tuple[SyncRun, bool, bool]:
    existing = active_run(owner_id)
    if existing is not None:
        requeue = is_stale(existing)
        if requeue:
            logger.warning(
                "sync run %s of owner %s has no heartbeat since %s; re-enqueueing it",
                existing.id,
                owner_id,
                existing.heartbeat_at,
            )
            # Back to queued with no lease: a live worker claims it at once, the silent one
            # can no longer write, and the fresh heartbeat means one re-enqueue per period.
            existing.status = RunStatus.QUEUED
            existing.lease = None
            existing.heartbeat_at = utcnow()
            db.session.commit()
        return existing, False, requeue
    run = SyncRun(
        owner_id=owner_id,
        entities=entities,
        full=full,
        trigger=trigger,
        status=RunStatus.QUEUED,
        checkpoint=_inherited_checkpoint(owner_id, entities, full),
        counts={},
        created_at=utcnow(),
    )
    db.session.add(run)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        winner = active_run(owner_id)
        if winner is None:  # finished between the insert and this read: try once more
            return _create_or_find(owner_id, entities, full, trigger)
        return winner, False, False
    logger.info(
        "queued sync run %s for owner %s (%s, %s, %s)",
        run.id,
        owner_id,
        ",".join(entities),
        "full" if full else "incremental",
        trigger,
    )
    return run, True, False


def _enqueue(run: SyncRun) -> None:
    try:
        queue.enqueue("sync.run", run.id)
    except Exception as exc:
        logger.error("could not enqueue sync run %s: %s", run.id, type(exc).__name__)
        fail_unclaimed(run.id, "Очередь задач недоступна: синхронизация не запущена")
        raise


def heartbeat_interval() -> float:
    """How often a running sync renews its lease: well inside SYNC_STALE_SECONDS."""
    configured = float(current_app.config.get("SYNC_HEARTBEAT_SECONDS", 10))
    return max(0.5, min(configured, stale_after().total_seconds() / 3))


def take_over_stale(limit: int = 100) -> list[int]:
    """Re-enqueue active runs whose worker went silent; a live worker resumes each one.

    A queued run whose message was lost and a running run whose worker was killed (or lost
    the database, or the broker) look the same: no sign of life for SYNC_STALE_SECONDS. Each
    is put back to ``queued`` with no lease (the silent worker can no longer write) and sent
    again; the claim then continues from the checkpoint.
    """
    cutoff = utcnow() - stale_after()
    seen = func.coalesce(
        runs_table.c.heartbeat_at, runs_table.c.started_at, runs_table.c.created_at
    )
    stale = and_(runs_table.c.status.in_(RunStatus.ACTIVE), seen < cutoff)
    ids = list(db.session.scalars(select(runs_table.c.id).where(stale).limit(limit)))
    taken: list[int] = []
    for run_id in ids:
        result = cast(
            "CursorResult[Any]",
            db.session.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, stale)
                .values(status=RunStatus.QUEUED, lease=None, heartbeat_at=utcnow())
            ),
        )
        db.session.commit()
        if result.rowcount != 1:  # it came back to life, or another beat was first
            continue
        logger.warning("sync run %s went silent; handing it to a live worker", run_id)
        try:
            queue.enqueue("sync.run", run_id)
        except Exception as exc:  # broker down: still queued, the next pass sends it
            logger.warning("could not re-enqueue sync run %s: %s", run_id, type(exc).__name__)
            continue
        taken.append(run_id)
    return taken


def fail_unclaimed(run_id: int, message: str) -> None:
    db.session.execute(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.status == RunStatus.QUEUED)
        .values(status=RunStatus.ERROR, error=message, finished_at=utcnow())
    )
    db.session.commit()


# -- the worker side --------------------------------------------------------------------------


class RunLease:
    """The right to execute one run, proven on every write by the lease token (fencing)."""

    def __init__(self, conn: Connection, run_id: int, token: str) -> None:
        self.conn = conn
        self.run_id = run_id
        self.token = token

    def _where(self) -> Any:
        return and_(
            runs_table.c.id == self.run_id,
            runs_table.c.lease == self.token,
            runs_table.c.status == RunStatus.RUNNING,
        )

    def write(self, **values: Any) -> None:
        """Update the run row inside the caller's transaction; LeaseLost if we were replaced."""
        values["heartbeat_at"] = utcnow()
        result = self.conn.execute(update(runs_table).where(self._where()).values(**values))
        if result.rowcount != 1:
            raise LeaseLost(f"sync run {self.run_id} was taken over by another worker")

    @contextmanager
    def kept_alive(self, engine: Engine, interval: float) -> Iterator[None]:
        """Renew the lease from a side thread while the body runs.

        Page writes renew it too, but a page can take long (429 waits, a slow amoCRM), and only
        a silent worker (killed, frozen, cut off) may be taken over.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with engine.begin() as conn:
                        renewed = conn.execute(
                            update(runs_table).where(self._where()).values(heartbeat_at=utcnow())
                        ).rowcount
                except Exception as exc:  # database down: the next beat tries again
                    logger.warning("sync run %s: heartbeat failed (%s)", self.run_id, exc)
                    continue
                if renewed != 1:
                    return  # taken over or finished; the main thread finds out on its next write

        thread = threading.Thread(target=beat, name=f"sync-heartbeat-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=interval + 5)

    def heartbeat(self, **values: Any) -> None:
        """Write progress in its own short transaction."""
        with self.conn.begin():
            self.write(**values)

    def finish(self, status: str, error: str | None = None, **values: Any) -> bool:
        with self.conn.begin():
            result = self.conn.execute(
                update(runs_table)
                .where(self._where())
                .values(
                    status=status,
                    error=error,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                    current_entity=None,
                    **values,
                )
            )
        return result.rowcount == 1


def claim_run(conn: Connection, run_id: int) -> tuple[RunLease, dict[str, Any]] | None:
    """Take a queued run, or a running one whose worker went silent; None if not ours to run."""
    now = utcnow()
    token = uuid.uuid4().hex
    with conn.begin():
        result = conn.execute(
            update(runs_table)
            .where(
                runs_table.c.id == run_id,
                or_(
                    runs_table.c.status == RunStatus.QUEUED,
                    and_(
                        runs_table.c.status == RunStatus.RUNNING,
                        or_(
                            runs_table.c.heartbeat_at.is_(None),
                            runs_table.c.heartbeat_at < now - stale_after(),
                        ),
                    ),
                ),
            )
            .values(
                status=RunStatus.RUNNING,
                lease=token,
                worker=worker_name(),
                heartbeat_at=now,
            )
        )
        if result.rowcount != 1:
            return None
        row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().one()
        if row["started_at"] is None:
            conn.execute(update(runs_table).where(runs_table.c.id == run_id).values(started_at=now))
    return RunLease(conn, run_id, token), dict(row)


# -- log and cursors ------------------------------------------------------------------------


def write_log(
    conn: Connection,
    owner_id: int,
    operation: str,
    status: str,
    details: dict[str, Any],
    run_id: int | None,
) -> None:
    conn.execute(
        SyncLog.__table__.insert().values(
            owner_id=owner_id,
            timestamp=utcnow(),
            operation=operation,
            status=status,
            details=details,
            run_id=run_id,
        )
    )


def read_cursor(conn: Connection, owner_id: int, entity: str) -> int | None:
    table = SyncCursor.__table__
    return conn.execute(
        select(table.c.updated_at_cursor).where(
            table.c.owner_id == owner_id, table.c.entity == entity
        )
    ).scalar()


def save_cursor(
    conn: Connection,
    owner_id: int,
    entity: str,
    *,
    cursor: int | None,
    full: bool = False,
    reconcile: bool = False,
) -> None:
    """Move the entity's high-water mark forward (never back) and stamp the run kind."""
    table = SyncCursor.__table__
    now = utcnow()
    row = (
        conn.execute(select(table).where(table.c.owner_id == owner_id, table.c.entity == entity))
        .mappings()
        .first()
    )
    values: dict[str, Any] = {"last_success_at": now}
    if full:
        values["last_full_at"] = now
    if reconcile:
        values["last_reconcile_at"] = now
    if row is None:
        conn.execute(
            table.insert().values(
                owner_id=owner_id, entity=entity, updated_at_cursor=cursor, **values
            )
        )
        return
    previous = row["updated_at_cursor"]
    if cursor is not None and (previous is None or cursor > previous):
        values["updated_at_cursor"] = cursor
    conn.execute(
        update(table).where(table.c.owner_id == owner_id, table.c.entity == entity).values(**values)
    )


@contextmanager
def run_connection() -> Iterator[Connection]:
    """One database connection for the whole run: no pool churn per page.

    On PostgreSQL the run's commits skip the wait for the WAL flush. Each page and its
    checkpoint commit together, so a crash can only lose the last pages *and* their
    checkpoint, which the next run simply reads again.
    """
    with db.engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.exec_driver_sql("SET synchronous_commit TO OFF")
            conn.commit()
        try:
            yield conn
        finally:
            if postgres and not conn.closed:
                try:
                    conn.rollback()
                    conn.exec_driver_sql("RESET synchronous_commit")
                    conn.commit()
                except Exception:  # a broken connection is discarded by the pool anyway
                    logger.debug("could not reset synchronous_commit", exc_info=True)
