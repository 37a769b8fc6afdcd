"""Echo suppression: amoCRM's webhook about a change we made ourselves needs no re-read.

Every write this service makes (a deal created by ``leads/complex``, a lead edited from the
workspace, a note, a task) is remembered as (owner, entity type, id, ``updated_at``). When the
account webhook for exactly that version comes back, the apply path knows the mirror already
holds it and skips the API read. A different ``updated_at`` is somebody else's change and is
re-read as usual. The one blind spot: another person's edit of the same entity within the same
second as ours carries the same ``updated_at`` (amoCRM's versions are whole seconds); the next
incremental sync (every ``SYNC_INTERVAL_SECONDS``) reads everything updated since the last one
and brings it in.

The record is committed on its own connection at once: amoCRM sends the webhook while we are
still handling its answer, and the apply worker must already see the record by then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.exc import OperationalError

from crm_app.extensions import db
from crm_app.models import OwnWrite

logger = logging.getLogger(__name__)

# An echo arrives within seconds; a day covers amoCRM's webhook retry ladder with room to spare.
RETENTION = timedelta(days=1)
PRUNE_EVERY_SECONDS = 600.0

_prune_lock = threading.Lock()
_last_prune = 0.0

Key = tuple[str, int, int]  # (entity_type, entity_id, updated_at)


def remember_own_write(owner_id: int, entity_type: str, entity_id: int, updated_at: int) -> None:
    """Record that we produced this version of the entity (call right after amoCRM answered)."""
    remember_own_writes(owner_id, [(entity_type, entity_id, updated_at)])


def remember_own_writes(owner_id: int, keys: Iterable[Key]) -> None:
    """Several versions at once (one batch write); committed immediately, never raises."""
    now = datetime.now(UTC)
    rows = [
        {
            "owner_id": int(owner_id),
            "entity_type": str(entity_type),
            "entity_id": int(entity_id),
            "updated_at": int(updated_at),
            "recorded_at": now,
        }
        for entity_type, entity_id, updated_at in {
            (t, int(i), int(u)) for t, i, u in keys if i and u is not None
        }
    ]
    if not rows:
        return
    stmt = _insert_ignore()
    try:
        with db.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # One writer at a time: do not wait long for a caller's own open transaction.
                conn.exec_driver_sql("PRAGMA busy_timeout = 250")
            try:
                conn.execute(stmt, rows)
                conn.commit()
            finally:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("PRAGMA busy_timeout = 5000")
    except OperationalError:
        # SQLite locked by the caller's own transaction: ride along with the caller's commit.
        logger.debug("own-write record joins the caller's transaction", exc_info=True)
        try:
            db.session.execute(stmt, rows)
        except Exception:
            logger.warning("could not remember own writes of owner %s", owner_id, exc_info=True)
            return
    except Exception:
        # Losing the record costs one re-read of the echo, nothing else.
        logger.warning("could not remember own writes of owner %s", owner_id, exc_info=True)
        return
    _maybe_prune()


def is_own_echo(owner_id: int, entity_type: str, entity_id: int, updated_at: int) -> bool:
    """True when this exact version of the entity is one we wrote ourselves."""
    return (entity_type, int(entity_id), int(updated_at)) in own_echoes(
        owner_id, [(entity_type, entity_id, updated_at)]
    )


def own_echoes(owner_id: int, keys: Iterable[Key]) -> set[Key]:
    """The subset of ``keys`` that are our own writes (one query per 500 keys)."""
    wanted = list({(t, int(i), int(u)) for t, i, u in keys})
    found: set[Key] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = db.session.execute(
            select(OwnWrite.entity_type, OwnWrite.entity_id, OwnWrite.updated_at).where(
                OwnWrite.owner_id == owner_id,
                tuple_(OwnWrite.entity_type, OwnWrite.entity_id, OwnWrite.updated_at).in_(chunk),
            )
        )
        found.update((t, int(i), int(u)) for t, i, u in rows)
    return found


def unix_version(value: Any) -> int | None:
    """A webhook's ``updated_at`` as unix seconds, or None when it is not one (task dates)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def prune(older_than: timedelta = RETENTION) -> int:
    """Forget records past retention; returns how many were removed."""
    cutoff = datetime.now(UTC) - older_than
    with db.engine.connect() as conn:
        result = conn.execute(delete(OwnWrite).where(OwnWrite.recorded_at < cutoff))
        conn.commit()
    return int(result.rowcount or 0)


def _maybe_prune() -> None:
    global _last_prune
    now = time.monotonic()
    if now - _last_prune < PRUNE_EVERY_SECONDS or not _prune_lock.acquire(blocking=False):
        return
    try:
        _last_prune = now
        prune()
    except Exception:
        logger.debug("pruning own-write records failed", exc_info=True)
    finally:
        _prune_lock.release()


def _insert_ignore() -> Any:
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(OwnWrite).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(OwnWrite).on_conflict_do_nothing()
