"""`flask crm sync`: foreground with progress, --async, exit codes."""

from __future__ import annotations

import subprocess
import sys

import requests

from crm_app.extensions import db
from crm_app.models import SyncRun
from tests.conftest import ROOT, app_env
from tests.sync.conftest import mirror_count


def test_cli_sync_in_the_foreground(app, runner, sandbox, connected):
    owner_id = connected(sandbox, "acme")
    result = runner.invoke(args=["crm", "sync", "--owner", "acme", "--full"])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and "contacts: 60" in result.output
    assert mirror_count(owner_id, "contacts") == 60
    run = db.session.query(SyncRun).one()
    assert run.trigger == "cli" and run.full is True

    result = runner.invoke(args=["crm", "sync", "--owner", "acme", "--entity", "leads"])
    assert result.exit_code == 0, result.output
    assert db.session.query(SyncRun).order_by(SyncRun.id.desc()).first().entities == ["leads"]


def test_cli_errors_exit_non_zero(app, runner, sandbox, connected):
    assert runner.invoke(args=["crm", "sync", "--owner", "nobody"]).exit_code == 2
    assert runner.invoke(args=["crm", "sync", "--owner", "x", "--entity", "deals"]).exit_code == 2
    connected(sandbox, "acme")
    sandbox.sandbox.limiter.blocked[sandbox.account.id] = float("inf")  # amoCRM's 403 block
    result = runner.invoke(args=["crm", "sync", "--owner", "acme"])
    assert result.exit_code == 1
    assert "403" in result.output


def test_cli_async_only_queues(app, runner, sandbox, connected, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr("crm_app.services.sync.runs._enqueue", lambda run: sent.append(run.id))
    connected(sandbox, "acme")
    result = runner.invoke(args=["crm", "sync", "--owner", "acme", "--async"])
    assert result.exit_code == 0 and "queued sync run" in result.output
    assert len(sent) == 1 and db.session.get(SyncRun, sent[0]).status == "queued"


def test_cli_as_a_real_process(app, sandbox, connected):
    owner_id = connected(sandbox, "acme")
    proc = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "crm", "sync", "--owner", "acme"],
        cwd=ROOT,
        env=app_env(app),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "records" in proc.stderr  # the progress lines
    assert "success" in proc.stdout
    assert mirror_count(owner_id, "tasks") == len(sandbox.account.tables["tasks"].records)
    assert requests.get(f"{sandbox.url}/_sandbox/requests", timeout=5).status_code == 200
