"""Token refresh: one refresh for a crowd of 401s in two processes, the beat task, keep-alive."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from crm_app.extensions import db
from crm_app.models import AmoToken
from crm_app.services import connection
from crm_app.services.tokens import load_tokens
from tests.conftest import app_env
from tests.connect.conftest import HX, token_requests

WORKER = Path(__file__).with_name("race_worker.py")


@pytest.mark.parametrize("stored_expiry", ["still valid", "also expired"])
def test_twenty_requests_in_two_processes_refresh_once(
    app, owner, connected, sandbox, tmp_path, stored_expiry
) -> None:
    owner_id = owner.owner_id
    connected(owner_id)
    # Every access token dies now. With our stored expiry still in the future each call meets
    # a 401 and refreshes after it; with it past, each caller refreshes before sending.
    assert requests.post(f"{sandbox.url}/_sandbox/tokens/expire", timeout=5).status_code == 200
    if stored_expiry == "also expired":
        db.session.query(AmoToken).filter_by(owner_id=owner_id).update(
            {AmoToken.expires_at: datetime.now(UTC) - timedelta(seconds=1)}
        )
        db.session.commit()
    before = load_tokens(owner_id)
    sandbox.clear_requests()

    go = tmp_path / "go"
    # The shared 7 rps pacing is not under test here; it would only stretch the run.
    env = app_env(app) | {"AMOCRM_RATE_LIMIT": "100"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(owner_id), "10", str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "READY", proc.stderr.read() if proc.stderr else line
        go.touch()
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    assert [o["errors"] for o in outcomes] == [[], []]
    assert sum(o["ok"] for o in outcomes) == 20
    refreshes = token_requests(sandbox)
    assert len(refreshes) == 1, refreshes
    account_calls = [e for e in sandbox.requests_log() if e["path"] == "/api/v4/account"]
    assert len([e for e in account_calls if e["status"] == 200]) == 20
    after = load_tokens(owner_id)
    assert after.version == before.version + 1
    assert after.refresh_token != before.refresh_token
    assert connection.status(owner_id)["status"] == "connected"


def test_beat_refreshes_due_owners_and_keeps_idle_ones_alive(
    app, make_user, connected, sandbox, monkeypatch
) -> None:
    from workers import tokens as tasks

    soon = make_user("soon", role="user", owner="soon").owner_id
    idle = make_user("idle", role="user", owner="idle").owner_id
    fresh = make_user("fresh", role="user", owner="fresh").owner_id
    for owner_id in (soon, idle, fresh):
        connected(owner_id)
    now = datetime.now(UTC)
    db.session.query(AmoToken).filter_by(owner_id=soon).update(
        {AmoToken.expires_at: now + timedelta(minutes=30)}
    )
    db.session.query(AmoToken).filter_by(owner_id=idle).update(
        {AmoToken.refreshed_at: now - timedelta(days=app.config["TOKEN_KEEPALIVE_DAYS"] + 1)}
    )
    db.session.commit()

    queued: list[int] = []
    monkeypatch.setattr(tasks.refresh_owner, "delay", queued.append)
    assert sorted(tasks.refresh_due()) == sorted([soon, idle])
    assert sorted(queued) == sorted([soon, idle])

    sandbox.clear_requests()
    versions = {o: load_tokens(o).version for o in (soon, idle, fresh)}
    for owner_id in queued + queued:  # a duplicate message must not refresh twice
        tasks.refresh_owner(owner_id)
    assert len(token_requests(sandbox)) == 2
    assert load_tokens(soon).version == versions[soon] + 1
    assert load_tokens(idle).version == versions[idle] + 1
    assert load_tokens(fresh).version == versions[fresh]
    assert tasks.refresh_due() == []


def test_dead_refresh_token_turns_the_badge_red(
    app, client, owner, login, connected, sandbox
) -> None:
    from workers import tokens as tasks

    connected(owner.owner_id)
    # The admin revoked access inside amoCRM (no disconnect hook configured).
    requests.post(
        f"{sandbox.url}/_sandbox/disconnect",
        json={"client_id": sandbox.config.client_id},
        timeout=5,
    )
    db.session.query(AmoToken).update({AmoToken.expires_at: datetime.now(UTC)})
    db.session.commit()
    assert tasks.refresh_owner(owner.owner_id) is False
    st = connection.status(owner.owner_id)
    assert st["status"] == "error" and "Token has been revoked" in st["last_error"]
    login("alice")
    badge = client.get("/admin/crm/ui/status", headers=HX).get_data(as_text=True)
    assert 'data-status="error"' in badge and "badge-error" in badge
    assert "Token has been revoked" in badge and 'id="reconnect"' in badge
