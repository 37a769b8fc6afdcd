"""Stored amoCRM tokens: save, read, and refresh under a per-owner lock, never losing a pair.

amoCRM refresh tokens are single-use. Two processes refreshing at once would leave one of them
holding a dead token, so every refresh runs under a per-owner lock (a row lock on PostgreSQL, a
file or Redis lock otherwise), re-reads the stored pair inside the lock, and commits the new pair
before anything uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_app.amocrm.errors import AmoCRMAuthError, AmoCRMTokenExpired
from crm_app.amocrm.tokens import TokenSet
from crm_app.extensions import db
from crm_app.models import AmoConfig, AmoToken, ConnectionStatus
from crm_app.services.locks import named_lock

logger = logging.getLogger(__name__)

LONG_LIVED = "long_lived"
OAUTH = "oauth"


class NotConnected(RuntimeError):
    """The owner has no stored tokens."""


@dataclass(frozen=True)
class StoredTokens:
    """A snapshot of the stored pair (never logged: repr hides tokens)."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime
    kind: str
    version: int

    def __repr__(self) -> str:
        return (
            f"StoredTokens(kind={self.kind}, version={self.version}, expires_at={self.expires_at})"
        )


def _snapshot(row: AmoToken) -> StoredTokens:
    return StoredTokens(row.access_token, row.refresh_token, row.expires_at, row.kind, row.version)


@contextmanager
def _session() -> Iterator[Session]:
    """A private session so token commits never flush a caller's half-done work."""
    session = Session(db.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def save_tokens(owner_id: int, tokens: TokenSet, kind: str = OAUTH) -> None:
    """Store a freshly issued pair (code exchange, long-lived token)."""
    with _session() as s:
        row = s.scalar(select(AmoToken).where(AmoToken.owner_id == owner_id))
        if row is None:
            row = AmoToken(owner_id=owner_id, version=0)
            s.add(row)
        row.kind = kind
        row.access_token = tokens.access_token
        row.refresh_token = tokens.refresh_token
        row.expires_at = tokens.expires_at
        row.api_domain = tokens.api_domain
        row.refreshed_at = datetime.now(UTC)
        row.version = (row.version or 0) + 1
        s.commit()


def delete_tokens(owner_id: int) -> None:
    with _session() as s:
        row = s.scalar(select(AmoToken).where(AmoToken.owner_id == owner_id))
        if row is not None:
            s.delete(row)
            s.commit()


def load_tokens(owner_id: int) -> StoredTokens | None:
    with _session() as s:
        row = s.scalar(select(AmoToken).where(AmoToken.owner_id == owner_id))
        return None if row is None else _snapshot(row)


def _mark(owner_id: int, status: str, error: str | None) -> None:
    with _session() as s:
        cfg = s.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
        if cfg is None:
            return
        cfg.status = status
        cfg.last_error = error
        if error:
            cfg.last_error_at = datetime.now(UTC)
        s.commit()


def refresh_tokens(
    owner_id: int, *, rejected: str | None = None, force: bool = False
) -> StoredTokens:
    """Refresh the owner's pair exactly once however many callers race here.

    `rejected` is the access token amoCRM just answered 401 to: if the stored token already
    differs, another process refreshed and we return its result. Without `rejected`, refresh
    only when forced or due (inside TOKEN_REFRESH_AHEAD_SECONDS of expiry).
    """
    from crm_app.services.amo import oauth_client_for

    ahead = timedelta(seconds=current_app.config["TOKEN_REFRESH_AHEAD_SECONDS"])
    # PostgreSQL: the row lock below serialises everyone. Elsewhere a named lock does.
    guard = _nullguard() if _is_postgres() else named_lock(f"token-refresh-{owner_id}", ttl=120)
    with guard, _session() as s:
        query = select(AmoToken).where(AmoToken.owner_id == owner_id)
        if _is_postgres():
            query = query.with_for_update()
        row = s.scalar(query)
        if row is None:
            raise NotConnected(f"owner {owner_id} has no amoCRM tokens")
        current = _snapshot(row)
        if rejected is not None and row.access_token != rejected:
            return current  # somebody else already rotated it
        now = datetime.now(UTC)
        if rejected is None and not force and row.expires_at > now + ahead:
            return current
        if row.kind == LONG_LIVED or not row.refresh_token:
            _mark(owner_id, ConnectionStatus.ERROR, "Долгосрочный токен отклонён или истёк")
            raise AmoCRMTokenExpired("long-lived token expired or revoked", status=401)
        cfg = s.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
        if cfg is None:
            raise NotConnected(f"owner {owner_id} has no amoCRM config")
        sent_refresh = row.refresh_token
        try:
            new = oauth_client_for(cfg).refresh_tokens(sent_refresh)
        except AmoCRMAuthError as exc:
            s.rollback()  # release the row lock before looking again
            latest = load_tokens(owner_id)
            if exc.is_revoked and latest is not None and latest.refresh_token != sent_refresh:
                # Lost a race with a process outside our lock: its pair is the live one.
                logger.info(
                    "token refresh for owner %s lost a race; using the stored pair", owner_id
                )
                return latest
            _mark(owner_id, ConnectionStatus.ERROR, f"Не удалось обновить токен: {exc.hint or exc}")
            raise
        row.access_token = new.access_token
        row.refresh_token = new.refresh_token or sent_refresh
        row.expires_at = new.expires_at
        row.api_domain = new.api_domain or row.api_domain
        row.refreshed_at = now
        row.version += 1
        s.commit()  # persisted (and the row lock released) before anyone uses the new token
        logger.info("refreshed amoCRM tokens for owner %s (version %s)", owner_id, row.version)
        if cfg.status == ConnectionStatus.ERROR and (cfg.last_error or "").startswith("Не удалось"):
            _mark(owner_id, ConnectionStatus.CONNECTED, None)
        return _snapshot(row)


@contextmanager
def _nullguard() -> Iterator[None]:
    yield


def due_for_refresh(now: datetime | None = None) -> list[int]:
    """Owners whose OAuth token expires soon or has not been rotated for the keep-alive period."""
    now = now or datetime.now(UTC)
    ahead = now + timedelta(seconds=current_app.config["TOKEN_REFRESH_AHEAD_SECONDS"])
    stale = now - timedelta(days=current_app.config["TOKEN_KEEPALIVE_DAYS"])
    with _session() as s:
        rows = s.execute(
            select(AmoToken.owner_id).where(
                AmoToken.kind == OAUTH,
                (AmoToken.expires_at <= ahead) | (AmoToken.refreshed_at <= stale),
            )
        )
        return [r[0] for r in rows]


class DbTokenSource:
    """The client's TokenSource backed by the database and the locked refresh above."""

    def __init__(self, owner_id: int) -> None:
        self.owner_id = owner_id

    def access_token(self) -> str:
        stored = load_tokens(self.owner_id)
        if stored is None:
            raise NotConnected(f"owner {self.owner_id} has no amoCRM tokens")
        # A token that is already past expiry would only earn a 401; renew it first.
        if stored.kind == OAUTH and stored.expires_at <= datetime.now(UTC) + timedelta(seconds=30):
            stored = refresh_tokens(self.owner_id, rejected=stored.access_token)
        return stored.access_token

    def refresh(self, rejected: str) -> str:
        return refresh_tokens(self.owner_id, rejected=rejected).access_token

    def __repr__(self) -> str:
        return f"DbTokenSource(owner_id={self.owner_id})"
