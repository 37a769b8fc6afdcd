"""The acknowledgement's database work in as few round trips and as little CPU as possible.

The endpoint is benchmarked against a bare Flask app. Through SQLAlchemy each delivery paid a
pool checkout with a ping (``SELECT 1``), statement compilation and result processing: about
0.5 ms of CPU and an extra round trip. On PostgreSQL this module keeps a small per-process stack
of plain psycopg connections in autocommit mode, so storing a delivery is one prepared
``INSERT … ON CONFLICT DO NOTHING RETURNING id``, committed (and fsynced) when it returns.
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

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
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
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def _give(self, conn: Any) -> None:
        with self.lock:
            if len(self.idle) < MAX_IDLE and not conn.closed:
                self.idle.append(conn)
                return
        conn.close()


# One stack per process and database, shared by every engine pointing there (tests build an app,
# hence an engine, per test); engines map to their stack weakly so the lookup stays cheap.
_stacks: dict[tuple[int, str], _Stack] = {}
_by_engine: weakref.WeakKeyDictionary[Engine, _Stack] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def _stack(engine: Engine) -> _Stack | None:
    """The stack for this engine's database, or None when it is not PostgreSQL."""
    stack = _by_engine.get(engine)
    if stack is not None and stack.pid == os.getpid():
        return stack
    if engine.dialect.name != "postgresql":
        return None
    with _guard:
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        key = (os.getpid(), dsn)
        stack = _stacks.get(key)
        if stack is None:
            stack = _stacks[key] = _Stack(dsn)
        _by_engine[engine] = stack
    return stack


def insert_delivery(
    engine: Engine, owner_id: int, body: bytes, digest: str, request_id: str | None
) -> int | None:
    """Commit one inbox row; its id, or None when these bytes were stored before."""
    now = datetime.now(UTC)
    stack = _stack(engine)
    if stack is not None:
        params = (owner_id, now, body, digest, request_id)

        def work(conn: Any) -> int | None:
            row = conn.execute(_INSERT, params, prepare=True).fetchone()
            return None if row is None else int(row[0])

        return stack.run(work)
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


def lookup_token(engine: Engine, digest: str) -> TokenOwner | None:
    """(owner_id, account_id, subdomain, status) of the config owning this token hash."""
    stack = _stack(engine)
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


def close_all() -> None:
    """Close this process's idle fast-path connections (tests, shutdown)."""
    with _guard:
        stacks = [s for k, s in _stacks.items() if k[0] == os.getpid()]
    for stack in stacks:
        with stack.lock:
            idle, stack.idle = stack.idle, []
        for conn in idle:
            conn.close()
