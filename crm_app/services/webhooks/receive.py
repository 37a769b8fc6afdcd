"""Accepting one delivery: token, checks, durable insert, kick. Shared by the WSGI fast path and the view.

It runs without a Flask request context (the fast path bypasses Flask's request machinery), so
everything it needs comes from the app object: config, the engine, the token cache and the
kicker.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import IO, Any

from flask import Flask

from crm_app.models import ConnectionStatus
from crm_app.services.availability import database_unavailable
from crm_app.services.ttl_cache import cache_for
from crm_app.services.webhooks import enqueue, fastpath, inbox
from crm_app.services.webhooks.parse import MalformedBody, inspect_envelope

logger = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_TOKEN = 128


@dataclass(frozen=True)
class Outcome:
    """What to answer: 200 with `new` telling a first delivery from a redelivery, or an error."""

    status: int
    detail: str = ""
    new: bool = False


def lookup(app: Flask, token: str) -> fastpath.TokenOwner | None:
    """The owner of a webhook token (cached for a few seconds)."""
    digest = _token_hash(token)
    cache = cache_for(app, "crm_webhook_tokens")
    row: fastpath.TokenOwner | None = cache.get(digest)
    if row is not None:
        return row
    sync_commit = bool(app.config.get("WEBHOOK_SYNC_COMMIT", False))
    found = fastpath.lookup_token(fastpath.engine_for(app), digest, sync_commit=sync_commit)
    if found is not None:
        cache.put(digest, found)
    return found


def check_account(
    cfg: fastpath.TokenOwner, account_id: str | None, subdomain: str | None
) -> Outcome | None:
    """None when the body's account block names the owner's connected account."""
    if not account_id and not subdomain:
        return Outcome(400, "The body has no account[id] or account[subdomain].")
    if cfg.status == ConnectionStatus.DISCONNECTED:
        # We unsubscribe on disconnect; a late hook has nothing to apply to.
        return Outcome(409, "The amoCRM integration is disconnected.")
    expected_id = cfg.account_id
    expected_sub = (cfg.subdomain or "").strip().lower()
    if expected_id is None and not expected_sub:
        return Outcome(409, "No amoCRM account is connected for this webhook URL.")
    if account_id and expected_id is not None and account_id.strip() != str(expected_id):
        return Outcome(403, "account[id] does not match the connected amoCRM account.")
    if subdomain and expected_sub and subdomain.strip().lower() != expected_sub:
        return Outcome(403, "account[subdomain] does not match the connected amoCRM account.")
    if expected_id is not None and not account_id and not expected_sub:
        return Outcome(403, "account[id] is missing.")
    return None


def _read(stream: IO[bytes], length: int | None, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (checked before and while reading)."""
    if length is not None and length > limit:
        return None
    # Chunked bodies carry no length: read one byte past the limit to notice.
    body = stream.read(limit + 1)
    return None if len(body) > limit else body


def ingest(
    app: Flask,
    token: str,
    *,
    mimetype: str,
    encoding: str,
    length: int | None,
    stream: IO[bytes],
    request_id: str | None,
) -> Outcome:
    """Check one delivery and store it durably before the caller answers (see docs/webhooks.md)."""
    if not token or len(token) > MAX_TOKEN:
        return Outcome(404, "Unknown webhook URL.")
    cfg: fastpath.TokenOwner | None = None
    try:
        cfg = lookup(app, token)
    except Exception as exc:
        if not database_unavailable(exc):
            logger.exception("webhook token lookup failed")
            return Outcome(503, "The delivery could not be stored; send it again later.")
        # Database down: checked against the token and the account when it is swept in.
        database_down = True
    else:
        database_down = False
        if cfg is None:
            return Outcome(404, "Unknown webhook URL.")
    if mimetype and mimetype != FORM:
        return Outcome(415, f"Webhooks must be sent as {FORM}.")
    if encoding and encoding.lower() != "identity":
        return Outcome(415, "Compressed webhook bodies are not accepted.")
    limit = int(app.config["WEBHOOK_MAX_BODY"])
    body = _read(stream, length, limit)
    if body is None:
        return Outcome(413, f"Webhook body larger than {limit} bytes.")
    try:
        envelope = inspect_envelope(body)
    except MalformedBody as exc:
        return Outcome(400, f"Malformed webhook body: {exc}.")
    if cfg is not None:
        refused = check_account(cfg, envelope.account_id, envelope.subdomain)
        if refused is not None:
            return refused
    if not envelope.has_payload:
        return Outcome(400, "The body names no events.")
    request_id = (request_id or None) and request_id[:64]
    if database_down:
        return _spool(app, token, body, request_id)
    assert cfg is not None
    try:
        new_id = fastpath.insert_delivery(
            fastpath.engine_for(app),
            cfg.owner_id,
            body,
            inbox.body_hash(body),
            request_id,
            sync_commit=bool(app.config.get("WEBHOOK_SYNC_COMMIT", False)),
        )
    except Exception as exc:
        if database_unavailable(exc):
            return _spool(app, token, body, request_id)
        # Not stored means not acknowledged: amoCRM retries a 5xx (5 min, 15 min, ...).
        logger.exception("webhook delivery could not be stored")
        return Outcome(503, "The delivery could not be stored; send it again later.")
    if new_id is not None:
        enqueue.kick(cfg.owner_id, app)
    return Outcome(200, new=new_id is not None)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _spool(app: Flask, token: str, body: bytes, request_id: str | None) -> Outcome:
    """The database is down: keep the delivery on local disk and acknowledge it."""
    from crm_app.services.webhooks import spool

    try:
        spool.spool_for(app).append(spool.Spooled(_token_hash(token), body, request_id))
    except Exception:
        logger.exception("webhook delivery could not be spooled either")
        return Outcome(503, "The delivery could not be stored; send it again later.")
    logger.warning("database unavailable: webhook delivery spooled")
    return Outcome(200, new=True)


def probe_database(app: Flask) -> None:
    """Raises while the database cannot answer the token lookup."""
    fastpath.lookup_token(
        fastpath.engine_for(app),
        "0" * 64,
        sync_commit=bool(app.config.get("WEBHOOK_SYNC_COMMIT", False)),
    )


def restore(app: Flask, item: Any) -> int:
    """Move one spooled delivery into the inbox with the usual checks; 1 if it was new."""
    sync_commit = bool(app.config.get("WEBHOOK_SYNC_COMMIT", False))
    cfg = fastpath.lookup_token(fastpath.engine_for(app), item.token_hash, sync_commit=sync_commit)
    if cfg is None:
        logger.warning("spooled webhook delivery for an unknown URL dropped")
        return 0
    try:
        envelope = inspect_envelope(item.body)
    except MalformedBody:  # checked before spooling; kept for files from older versions
        return 0
    refused = check_account(cfg, envelope.account_id, envelope.subdomain)
    if refused is not None:
        logger.warning("spooled webhook delivery dropped: %s", refused.detail)
        return 0
    new_id = fastpath.insert_delivery(
        fastpath.engine_for(app),
        cfg.owner_id,
        item.body,
        inbox.body_hash(item.body),
        item.request_id,
        sync_commit=sync_commit,
    )
    if new_id is None:
        return 0
    enqueue.kick(cfg.owner_id, app)
    return 1
