"""Taking inbound requests in: store first, enqueue second, so nothing is lost."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError

from crm_app.extensions import db
from crm_app.models import InboundPerson, InboundRequest, InboundStatus
from crm_app.services import queue
from crm_app.services.inbound.schema import InboundPayload, parse_payload

logger = logging.getLogger(__name__)

PROCESS_TASK = "inbound.process"
BATCH_TASK = "inbound.batch"
# A queued task that never started (lost message) stops blocking kicks after this long.
KICK_FLAG_TTL = 60
# A queued request nobody touched for this long is enqueued again by inbound.retry_stale.
STALE_AFTER_SECONDS = 300
_REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud over the phone


def new_ref() -> str:
    """A person's reference, e.g. ``IN7K3M9Q2X``: unique, searchable, safe in a deal name."""
    return "IN" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(8))


def fingerprint(data: Mapping[str, Any], extra: str | None = None) -> str:
    """SHA-256 of what a message says; equal for a retried or duplicated copy of it."""
    keys = ("channel", "external_id", "name", "username", "phone", "email", "message")
    basis = {k: data.get(k) for k in keys}
    basis["utm"] = dict(sorted((data.get("utm") or {}).items()))
    basis["page_url"] = data.get("page_url")
    basis["extra"] = extra
    raw = json.dumps(basis, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def get_or_create_person(owner_id: int, channel: str, external_id: str) -> InboundPerson:
    """The person row, created at most once even under concurrent inserts (unique constraint)."""
    query = select(InboundPerson).where(
        InboundPerson.owner_id == owner_id,
        InboundPerson.channel == channel,
        InboundPerson.external_id == external_id,
    )
    person = db.session.scalar(query)
    if person is not None:
        return person
    dialect = db.engine.dialect.name
    values = {
        "owner_id": owner_id,
        "channel": channel,
        "external_id": external_id,
        "ref": new_ref(),
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC),
    }
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        stmt: postgresql.Insert | sqlite.Insert
        if dialect == "postgresql":
            stmt = postgresql.insert(InboundPerson).values(**values)
        else:
            stmt = sqlite.insert(InboundPerson).values(**values)
        # Only the (owner, channel, external_id) conflict is expected; a clash of the random
        # ref would surface as an error instead of silently dropping the person.
        stmt = stmt.on_conflict_do_nothing(index_elements=["owner_id", "channel", "external_id"])
        db.session.execute(stmt)
        db.session.commit()
    else:  # pragma: no cover - other databases are not supported targets
        try:
            db.session.add(InboundPerson(**values))
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
    person = db.session.scalar(query)
    if person is None:  # pragma: no cover - the insert above either made it or lost to another
        raise RuntimeError("inbound person could not be stored")
    return person


def find_by_idempotency_key(owner_id: int, key: str) -> InboundRequest | None:
    return db.session.scalar(
        select(InboundRequest).where(
            InboundRequest.owner_id == owner_id, InboundRequest.idempotency_key == key
        )
    )


def submit(
    owner_id: int,
    payload: InboundPayload | Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    fingerprint_extra: str | None = None,
    enqueue_now: bool = True,
) -> InboundRequest:
    """Store one inbound request (status ``queued``) and hand it to the worker.

    The same ``idempotency_key`` returns the request stored the first time. Raises
    ``pydantic.ValidationError`` for a bad payload given as a mapping.
    """
    data = payload if isinstance(payload, InboundPayload) else parse_payload(payload)
    key = (idempotency_key or "").strip()[:128] or None
    if key is not None:
        existing = find_by_idempotency_key(owner_id, key)
        if existing is not None:
            return existing
    person = get_or_create_person(owner_id, data.channel, data.external_id)
    stored = data.stored()
    req = InboundRequest(
        public_id=str(uuid.uuid4()),
        owner_id=owner_id,
        person_id=person.id,
        api_key_id=api_key_id,
        channel=data.channel,
        external_id=data.external_id,
        payload=stored,
        idempotency_key=key,
        fingerprint=fingerprint(stored, fingerprint_extra),
        status=InboundStatus.QUEUED,
        # The beat leaves it to the task just sent; only if that is lost does it step in.
        next_attempt_at=datetime.now(UTC) + timedelta(seconds=STALE_AFTER_SECONDS),
    )
    db.session.add(req)
    try:
        db.session.flush()
        # Read before the commit expires it: reading it back after the commit needs the
        # database, and if that fails the stored request would not be sent until the stale sweep.
        request_id = req.id
        db.session.commit()
    except IntegrityError:
        # Two copies with one idempotency key raced: the other one was stored first.
        db.session.rollback()
        existing = find_by_idempotency_key(owner_id, key) if key else None
        if existing is None:
            raise
        return existing
    if enqueue_now:
        enqueue(request_id, owner_id)
    return req


def enqueue(request_id: int, owner_id: int | None = None) -> bool:
    """Hand a stored request to its owner's batch runner; False if the broker is unreachable (the
    row stays queued and the beat's ``inbound.retry_stale`` hands it over later)."""
    if owner_id is None:
        owner_id = db.session.scalar(
            select(InboundRequest.owner_id).where(InboundRequest.id == request_id)
        )
        if owner_id is None:
            return False
    if kick(owner_id):
        return True
    mark_due(request_id)
    return False


def mark_due(request_id: int, delay: float = 0.0) -> None:
    """Let the next inbound.retry_stale pass after `delay` hand it over (no task was sent)."""
    try:
        db.session.execute(
            sa_update(InboundRequest)
            .where(InboundRequest.id == request_id, InboundRequest.status == InboundStatus.QUEUED)
            .values(next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))
        )
        db.session.commit()
    except Exception as exc:  # the stale sweep still finds it, only later
        db.session.rollback()
        logger.warning("could not mark inbound request %s due: %s", request_id, type(exc).__name__)


def is_eager() -> bool:
    """Tasks run inline (``CELERY_EAGER``): no broker, no countdowns."""
    celery: Any = current_app.extensions.get("celery")
    return bool(celery is not None and celery.conf.task_always_eager)


def _flag_key(owner_id: int) -> str:
    return f"crm:inbound:kicked:{owner_id}"


def _redis() -> Any | None:
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    cache = current_app.extensions.setdefault("crm_inbound_redis", {})
    if url not in cache:
        import redis

        # Short timeouts: a hung Redis must not stall intake; the beat covers a lost kick.
        cache[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    return cache[url]


def kick(owner_id: int, *, countdown: float | None = None, force: bool = False) -> bool:
    """Queue ``inbound.batch`` for the owner unless one is already waiting to start.

    With Redis a per-owner flag means "a task is queued and has not taken the owner's lock yet":
    while it is set, another kick is redundant, because that task will claim every due request.
    The runner clears the flag once it holds the lock. ``force`` (a countdown retry, a runner
    handing over) always sends. Without Redis every kick sends; the runner's lock serialises.
    """
    client = None if force or is_eager() else _redis()
    try:
        if client is not None and not client.set(
            _flag_key(owner_id), "1", nx=True, ex=KICK_FLAG_TTL
        ):
            return True
    except Exception as exc:  # Redis trouble: send anyway, a spare task is harmless
        logger.warning("inbound kick flag unavailable: %s", type(exc).__name__)
        client = None
    try:
        queue.enqueue(BATCH_TASK, owner_id, countdown=countdown)
    except Exception as exc:  # the request is stored; inbound.retry_stale enqueues it later
        logger.warning(
            "could not enqueue inbound batch of owner %s: %s", owner_id, type(exc).__name__
        )
        clear_kick(owner_id)
        return False
    return True


def clear_kick(owner_id: int) -> None:
    """Called by the runner once it holds the owner's lock (see ``kick``)."""
    client = _redis()
    if client is None:
        return
    try:
        client.delete(_flag_key(owner_id))
    except Exception as exc:
        logger.warning("could not clear the inbound kick flag: %s", type(exc).__name__)
