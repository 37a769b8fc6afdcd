"""Migrations build the same schema as the models, on PostgreSQL and on SQLite (make run)."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from tests.conftest import ROOT, _pg_admin_url


def _flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(database_url: str, tmp_path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url, "CRM_INSTANCE_PATH": str(tmp_path)})
    env.pop("REDIS_URL", None)
    return env


def test_upgrade_check_downgrade_on_postgres(tmp_path):
    admin = _pg_admin_url()
    name = f"crm_migr_{tmp_path.name[-12:].replace('-', '_')}".lower()
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = admin.set(database=name).render_as_string(hide_password=False)
        env = _env(url, tmp_path)
        up = _flask(env, "db", "upgrade")
        assert up.returncode == 0, up.stderr[-2000:]
        check = _flask(env, "db", "check")
        assert check.returncode == 0, "models and migrations disagree:\n" + check.stderr[-2000:]
        down = _flask(env, "db", "downgrade", "base")
        assert down.returncode == 0, down.stderr[-2000:]
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def test_upgrade_on_sqlite(tmp_path):
    env = _env(f"sqlite:///{tmp_path / 'crm.sqlite3'}", tmp_path)
    up = _flask(env, "db", "upgrade")
    assert up.returncode == 0, up.stderr[-2000:]
    check = _flask(env, "db", "check")
    assert check.returncode == 0, check.stderr[-2000:]
