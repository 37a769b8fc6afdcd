"""amojo's channel hook: checked, stored once, acknowledged at once; delivery happens later.

amoCRM sends a channel hook once and never retries it, and waits only briefly for the answer,
so the acknowledgement must stay fast under bursts (issue target: p99 < 200 ms at 200/s). Two
paths share the checks in `checked_reply`:

- PostgreSQL (`accept_fast`, called by the WSGI fast path before Flask's request cycle): the
  channel comes from a few-second cache, and the message, its conversation lookup and the
  conversation's preview are one prepared statement on an autocommit connection; the delivery
  task is kicked from a daemon thread (`services/kicker.py`) instead of inside the request.
- Other databases (the embedded SQLite default): the Flask view and SQLAlchemy
  (`intake.channel_hook`).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from crm_app.amocrm.chats_signing import webhook_signature_ok
from crm_app.models.chats import Leg
from crm_app.services import queue
from crm_app.services.chats.messages import DELIVER_TASK, ManagerReply, manager_reply
from crm_app.services.kicker import kicker_for
from crm_app.services.ttl_cache import cache_for
from crm_app.services.webhooks import fastpath

logger = logging.getLogger(__name__)


class HookRefused(Exception):
    """A channel hook we must not store: ``status`` is the answer (401 signature, 404 scope)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def checked_reply(secret: str | None, raw: bytes, signature: str | None) -> ManagerReply | None:
    """The hook's message once the scope is known (`secret`) and the signature holds.

    None for a valid hook that carries no message (typing, reactions): acknowledged, not stored.
    """
    if secret is None:
        raise HookRefused(404, "unknown scope")
    if not webhook_signature_ok(secret, raw, signature):
        raise HookRefused(401, "missing or wrong X-Signature")
    try:
        body = json.loads(raw)
    except ValueError:
        raise HookRefused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HookRefused(400, "the body must be a JSON object")
    return manager_reply(body)


@dataclass(frozen=True)
class _Scope:
    owner_id: int
    secret: str


def _scope(app: Flask, scope_id: str) -> _Scope | None:
    """The channel behind a scope: cached for a few seconds (hits only, see ``ttl_cache``)."""
    cache = cache_for(app, "crm_chat_scopes")
    hit: _Scope | None = cache.get(scope_id)
    if hit is not None:
        return hit
    from crm_app.services.chats.channel import channel_for_scope

    with app.app_context():
        ch = channel_for_scope(scope_id)
        found = None if ch is None else _Scope(ch.owner_id, ch.secret)
    if found is not None:
        cache.put(scope_id, found)
    return found


# One statement: find the conversation (our key first, then amojo's chat id), insert the message
# unless this amojo message id was stored before, and move the conversation's preview.
_STORE = """
WITH conv AS (
    SELECT id FROM conversations
    WHERE owner_id = %(owner)s AND (conversation_key = %(key)s OR amojo_chat_id = %(ref)s)
    ORDER BY (conversation_key = %(key)s) IS TRUE DESC
    LIMIT 1
), ins AS (
    INSERT INTO chat_messages (owner_id, conversation_id, direction, author, author_name, text,
        media, msgid, amojo_msgid, source_key, to_amo, amo_tried, to_person, status_reported,
        attempts, created_at, updated_at)
    SELECT %(owner)s, conv.id, 'out', 'manager', %(author)s, %(text)s, %(media)s, %(msgid)s,
        %(amojo)s, %(source)s, %(to_amo)s, false, %(to_person)s, false, 0, %(now)s, %(now)s
    FROM conv
    ON CONFLICT DO NOTHING
    RETURNING id, conversation_id
), touched AS (
    UPDATE conversations SET last_message_at = %(now)s, last_text = %(preview)s,
        updated_at = %(now)s
    FROM ins WHERE conversations.id = ins.conversation_id
    RETURNING conversations.id
)
SELECT (SELECT id FROM conv), (SELECT id FROM ins), (SELECT count(*) FROM touched)
"""


def fast_path_available(app: Flask) -> bool:
    """True when `accept_fast` can take hooks here (PostgreSQL); otherwise the view does."""
    return fastpath.stack_for(fastpath.engine_for(app)) is not None


def accept_fast(app: Flask, scope_id: str, raw: bytes, signature: str | None) -> bool:
    """Check and store one hook on PostgreSQL; True when it was a new message."""
    sync_commit = bool(app.config.get("WEBHOOK_SYNC_COMMIT", False))
    stack = fastpath.stack_for(fastpath.engine_for(app), sync_commit)
    if stack is None:
        raise RuntimeError("the hook fast path needs PostgreSQL")
    scope = _scope(app, scope_id)
    reply = checked_reply(None if scope is None else scope.secret, raw, signature)
    if reply is None or scope is None:
        return False
    from psycopg.types.json import Jsonb

    now = datetime.now(UTC)
    params: dict[str, Any] = {
        "owner": scope.owner_id,
        "key": reply.client_id,
        "ref": reply.chat_ref,
        "author": reply.author_name,
        "text": reply.text,
        "media": Jsonb(reply.media) if reply.media else None,
        "msgid": str(uuid.uuid4()),
        "amojo": reply.amojo_msgid,
        "source": f"amojo:{reply.amojo_msgid}",
        "to_amo": Leg.SENT,
        "to_person": Leg.PENDING,
        "now": now,
        "preview": reply.preview,
    }
    row = stack.run(lambda conn: conn.execute(_STORE, params, prepare=True).fetchone())
    conversation_id, message_id = (row[0], row[1]) if row is not None else (None, None)
    if conversation_id is None:
        logger.warning("owner %s: channel hook for an unknown conversation", scope.owner_id)
        return False
    if message_id is None:
        return False  # stored before: amojo sent the same message id again
    _kick_later(app, int(conversation_id))
    return True


def _kick_later(app: Flask, conversation_id: int) -> None:
    def send(key: int) -> bool:
        with app.app_context():
            try:
                queue.enqueue(DELIVER_TASK, key)
            except Exception as exc:  # the rows are the outbox; retried here, swept by the beat
                logger.warning("could not enqueue chat delivery %s: %s", key, type(exc).__name__)
                return False
        return True

    try:
        kicker_for(app, "crm_chat_kicker", send).add(conversation_id)
    except Exception:
        logger.exception("could not schedule chat delivery for conversation %s", conversation_id)
