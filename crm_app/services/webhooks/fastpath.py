"""The acknowledgement's database work in as few round trips and as little CPU as possible.

The endpoint is benchmarked against a bare Flask app. Through SQLAlchemy each delivery paid a
pool checkout with a ping (``SELECT 1``), statement compilation and result processing: about
0.5 ms of CPU and an extra round trip. On PostgreSQL this module uses plain psycopg connections
in autocommit mode instead (a small per-process stack of them, no ping: a dropped connection is
replaced and the idempotent insert retried once), so storing a delivery is one prepared
``INSERT … ON CONFLICT DO NOTHING RETURNING id``, committed before it returns (flushed to disk
before it returns too when WEBHOOK_SYNC_COMMIT is on; see docs/webhooks.md "Durability").
(Handing rows to a group-commit writer thread was tried: PostgreSQL already flushes concurrent
commits together, and the thread hand-off cost what the shared statement saved.)

Other databases (the embedded SQLite default) go through SQLAlchemy.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from flask import Flask
from sqlalchemy import Engine, select

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_IDLE = 8

_INSERT = (
    "INSERT INTO webhook_inbox (owner_id, received_at, body, body_hash, request_id, status, attempts)"
    " VALUES (%s, %s, %s, %s, %s, 'pending', 0)"
    " ON CONFLICT ON CONSTRAINT uq_webhook_inbox_owner_hash DO NOTHING RETURNING id"
)
_LOOKUP = (
    "SELECT owner_id, account_id, subdomain, status FROM amocrm_configs"
    " WHERE webhook_token_hash = %s"
)


class TokenOwner(NamedTuple):
    """Whose webhook URL a token is, and the account deliveries to it must name."""

    owner_id: int
    account_id: int | None
    subdomain: str | None
    status: str


class _Stack:
    """Idle psycopg connections of this process for one database URL."""

    def __init__(self, dsn: str, sync_commit: bool = True) -> None:
        self.dsn = dsn
        self.sync_commit = sync_commit
        self.pid = os.getpid()
        self.idle: list[Any] = []
        self.lock = threading.Lock()

    def run(self, work: Callable[[Any], T]) -> T:
        import psycopg

        for attempt in (1, 2):
            conn = self._take()
            try:
                result = work(conn)
            except psycopg.OperationalError:
                # A connection the server dropped (restart, idle timeout): retry once on a
                # fresh one. The INSERT is idempotent thanks to the body-hash constraint.
                conn.close()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            self._give(conn)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> Any:
        import psycopg

        with self.lock:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        if not self.sync_commit:
            # See docs/webhooks.md "Durability": committed at once, flushed to disk by the WAL
            # writer within a few hundred milliseconds.
            conn.execute("SET synchronous_commit TO off")
        return conn

    def _give(self, conn: Any) -> None:
        with self.lock:
            if len(self.idle) < MAX_IDLE and not conn.closed:
                self.idle.append(conn)
                return
        conn.close()


# One stack per process and database, shared by every engine pointing there (tests build an app,
# hence an engine, per test); engines map to their stack weakly so the lookup stays cheap.
_stacks: dict[tuple[int, str, bool], _Stack] = {}
_by_engine: weakref.WeakKeyDictionary[Engine, dict[bool, _Stack]] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def stack_for(engine: Engine, sync_commit: bool = True) -> _Stack | None:
    """The stack for this engine's database, or None when it is not PostgreSQL."""
    known = _by_engine.get(engine)
    stack = known.get(sync_commit) if known is not None else None
    if stack is not None and stack.pid == os.getpid():
        return stack
    if engine.dialect.name != "postgresql":
        return None
    with _guard:
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        key = (os.getpid(), dsn, sync_commit)
        stack = _stacks.get(key)
        if stack is None:
            stack = _stacks[key] = _Stack(dsn, sync_commit)
        _by_engine.setdefault(engine, {})[sync_commit] = stack
    return stack


_engine_guard = threading.Lock()


def engine_for(app: Flask) -> Engine:
    """The app's engine, reachable without an app context (fast paths run outside Flask)."""
    engine: Engine | None = app.extensions.get("crm_webhook_engine")
    if engine is None:
        with _engine_guard, app.app_context():
            from crm_app.extensions import db

            engine = app.extensions["crm_webhook_engine"] = db.engine
    return engine


def insert_delivery(
    engine: Engine,
    owner_id: int,
    body: bytes,
    digest: str,
    request_id: str | None,
    *,
    sync_commit: bool = True,
) -> int | None:
    """Commit one inbox row; its id, or None when these bytes were stored before."""
    now = datetime.now(UTC)
    stack = stack_for(engine, sync_commit)
    if stack is not None:
        params = (owner_id, now, body, digest, request_id)
        row = stack.run(lambda conn: conn.execute(_INSERT, params, prepare=True).fetchone())
        return None if row is None else int(row[0])
    from crm_app.services.webhooks.inbox import insert_statement

    values = {
        "owner_id": owner_id,
        "body": body,
        "body_hash": digest,
        "request_id": request_id,
        "status": "pending",
        "attempts": 0,
        "received_at": now,
    }
    with engine.connect() as conn:
        result = conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            insert_statement(engine.dialect.name), values
        )
        return result.scalar()


def lookup_token(engine: Engine, digest: str, *, sync_commit: bool = True) -> TokenOwner | None:
    """(owner_id, account_id, subdomain, status) of the config owning this token hash.

    `sync_commit` only picks the same connections the inserts use; a read does not commit.
    """
    stack = stack_for(engine, sync_commit)
    if stack is not None:
        row = stack.run(lambda conn: conn.execute(_LOOKUP, (digest,), prepare=True).fetchone())
        return TokenOwner(*row) if row is not None else None
    from crm_app.models import AmoConfig

    query = select(
        AmoConfig.owner_id, AmoConfig.account_id, AmoConfig.subdomain, AmoConfig.status
    ).where(AmoConfig.webhook_token_hash == digest)
    with engine.connect() as conn:
        found = conn.execute(query).first()
    return TokenOwner(*found) if found is not None else None
