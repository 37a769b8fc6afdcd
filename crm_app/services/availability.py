"""Telling "a dependency is down" (database, Redis) from a bug, and how long to wait for it."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Retries inside a task while a dependency is down: seconds, not minutes (docs/deployment.md).
BACKOFF_START = 1.0
BACKOFF_MAX = 15.0


def database_unavailable(exc: BaseException) -> bool:
    """True for errors meaning "the database cannot be reached", not a bad query."""
    if isinstance(exc, PoolTimeout):  # no pooled connection came free in time
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, (OperationalError, InterfaceError)
        )
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def broker_unavailable(exc: BaseException) -> bool:
    """True for Redis / kombu connection errors."""
    import kombu.exceptions
    import redis.exceptions

    return isinstance(
        exc,
        (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            kombu.exceptions.OperationalError,
            ConnectionError,
        ),
    )


def transient(exc: BaseException) -> bool:
    """A dependency outage: worth retrying soon rather than failing or dropping the work."""
    return database_unavailable(exc) or broker_unavailable(exc)


def backoff(retries: int) -> float:
    """1, 2, 4, 8, 15, 15 … seconds."""
    return float(min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, retries)))
