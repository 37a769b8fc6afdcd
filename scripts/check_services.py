"""Fail fast, with a clear message, when PostgreSQL or Redis for the tests is unreachable."""

from __future__ import annotations

import os
import sys

import redis
import sqlalchemy as sa


def main() -> int:
    pg = os.environ.get(
        "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    rd = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    problems = []
    try:
        url = sa.engine.make_url(pg)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        problems.append(f"PostgreSQL unreachable at {pg}: {type(exc).__name__}")
    try:
        redis.Redis.from_url(rd, socket_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis unreachable at {rd}: {type(exc).__name__}")
    for p in problems:
        print(
            f"ERROR: {p}. Start it, or point TEST_DATABASE_URL / REDIS_URL at one.", file=sys.stderr
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
