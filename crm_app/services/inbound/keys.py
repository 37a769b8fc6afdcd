"""Widget/bot API keys: shown once, stored as a SHA-256 hash plus a display prefix."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import ApiKey

logger = logging.getLogger(__name__)

KEY_PREFIX = "crmk_"
# "crmk_" plus 8 characters: enough to tell keys apart in a list, far too little to guess one.
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8
MAX_NAME_LEN = 80
# last_used_at is a hint for the admin, not an audit log: one write a minute per key is plenty.
_TOUCH_EVERY = timedelta(seconds=60)


def hash_key(plain: str) -> str:
    """The stored form of a key: hex SHA-256 (keys are 256-bit random, so no salt is needed)."""
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def create_api_key(owner_id: int, name: str = "") -> tuple[str, ApiKey]:
    """Create a key for the owner; returns the plain key (show it once) and the stored row."""
    name = (name or "").strip()
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"the key name must be at most {MAX_NAME_LEN} characters")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        owner_id=owner_id,
        name=name,
        prefix=plain[:DISPLAY_PREFIX_LEN],
        key_hash=hash_key(plain),
    )
    db.session.add(row)
    db.session.commit()
    logger.info("api key %s created for owner %s", row.prefix, owner_id)
    return plain, row


def authenticate_api_key(plain: str | None) -> ApiKey | None:
    """The live key matching ``plain``, or None (unknown, malformed or revoked)."""
    if not plain or not isinstance(plain, str) or len(plain) > 200:
        return None
    digest = hash_key(plain.strip())
    # The lookup is by hash, so its timing says nothing about the key; the compare below is
    # constant-time anyway, in case the index ever returns a near miss.
    row = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if row.revoked_at is not None:
        return None
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        row.last_used_at = now
        db.session.commit()
    return row


def list_api_keys(owner_id: int, *, include_revoked: bool = True) -> list[ApiKey]:
    """The owner's keys, newest first (prefix and name only; the key itself is never kept)."""
    query = select(ApiKey).where(ApiKey.owner_id == owner_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(db.session.scalars(query.order_by(ApiKey.id.desc())))


def find_api_key(owner_id: int | None, ref: str) -> ApiKey | None:
    """A key by id or by display prefix, optionally limited to one owner."""
    ref = (ref or "").strip()
    if not ref:
        return None
    query = select(ApiKey)
    if owner_id is not None:
        query = query.where(ApiKey.owner_id == owner_id)
    if ref.isdigit():
        return db.session.scalar(query.where(ApiKey.id == int(ref)))
    matches = list(db.session.scalars(query.where(ApiKey.prefix == ref[:DISPLAY_PREFIX_LEN])))
    return matches[0] if len(matches) == 1 else None


def revoke(key: ApiKey) -> bool:
    """Revoke a key at once; False if it was already revoked."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = datetime.now(UTC)
    db.session.commit()
    logger.info("api key %s revoked for owner %s", key.prefix, key.owner_id)
    return True


def revoke_api_key(owner_id: int, key_id: int) -> ApiKey | None:
    """Revoke the owner's key ``key_id``; None when the owner has no such key."""
    key = db.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.owner_id == owner_id))
    if key is not None:
        revoke(key)
    return key
