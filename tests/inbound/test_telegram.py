"""POST /webhooks/telegram/<secret> and `flask telegram set-webhook` (a fake Bot API server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from crm_app.extensions import db
from crm_app.models import AmoConfig, InboundRequest
from crm_app.services.inbound import telegram
from tests.inbound.conftest import (
    contact_cf,
    mark_synced,
    notes_of_lead,
    records,
    wait_done,
    warm_fields,
)


def _update(
    update_id: int, text: str | None, user_id: int = 4242, chat: str = "private", **extra: Any
) -> dict:
    message: dict[str, Any] = {
        "message_id": update_id * 10,
        "date": 1700000000,
        "chat": {"id": user_id, "type": chat},
        "from": {"id": user_id, "is_bot": False, "first_name": "Алиса", "last_name": "Котова",
                 "username": "alice_k"},
        **extra,
    }  # fmt: skip
    if text is not None:
        message["text"] = text
    return {"update_id": update_id, "message": message}


def secrets_for(owner_id: int) -> dict[str, str]:
    """Set the owner's webhook secret as `telegram set-webhook` would; returns path and header."""
    from crm_app.services.settings import get_or_create_config

    cfg = get_or_create_config(owner_id)
    telegram.store_secret(cfg, "test-secret-value-0123456789abcdef")
    secret = cfg.telegram_secret
    return {"path": telegram.path_token(secret), "header": telegram.header_token(secret)}


@pytest.fixture
def tg(make_user) -> dict[str, str]:
    """An owner without amoCRM (storing needs none) and its webhook secrets."""
    return secrets_for(make_user("bot-owner", role="admin", owner="bot-owner").owner_id)


def _post(client, tg, update, header: str | None = "ok"):
    headers = {}
    if header is not None:
        headers[telegram.HEADER] = tg["header"] if header == "ok" else header
    return client.post(f"/webhooks/telegram/{tg['path']}", json=update, headers=headers)


def _requests() -> list[InboundRequest]:
    db.session.expire_all()
    return list(db.session.scalars(select(InboundRequest).order_by(InboundRequest.id)))


def test_secret_path_and_header_are_checked(client, tg):
    assert client.post("/webhooks/telegram/wrong", json=_update(1, "hi")).status_code == 404
    assert _post(client, tg, _update(1, "hi"), header=None).status_code == 401
    assert _post(client, tg, _update(1, "hi"), header="forged").status_code == 401
    assert _post(client, tg, _update(1, "hi"), header=tg["path"]).status_code == 401
    # The hash finds the owner; the raw secret itself is not the path.
    cfg = db.session.scalar(select(AmoConfig))
    assert client.post(f"/webhooks/telegram/{cfg.telegram_secret}", json={}).status_code == 404
    assert _requests() == []


def test_ignored_updates_are_answered_200(client, tg):
    ignored = [
        {"update_id": 1, "edited_message": _update(1, "x")["message"]},
        {"update_id": 2, "callback_query": {"id": "1"}},
        _update(3, "в группе", chat="group"),
        {"update_id": 4, "message": {**_update(4, "бот")["message"], "from": {"id": 9, "is_bot": True}}},
    ]  # fmt: skip
    for update in ignored:
        resp = _post(client, tg, update)
        assert resp.status_code == 200 and resp.json == {"ok": True}
    assert _requests() == []
    assert _post(client, tg, None).status_code == 400


def test_redelivered_update_is_stored_once(client, tg):
    for _ in range(3):
        assert _post(client, tg, _update(77, "Привет")).status_code == 200
    rows = _requests()
    assert len(rows) == 1
    req = rows[0]
    assert (req.channel, req.external_id) == ("telegram", "4242")
    assert req.payload["name"] == "Алиса Котова" and req.payload["username"] == "alice_k"
    photo = _update(78, None, photo=[{"file_id": "x"}], caption=None)
    assert _post(client, tg, photo).status_code == 200
    assert _requests()[-1].payload["message"] == "[photo]"


def test_first_message_makes_contact_and_deal_then_notes(client, sandbox, owner, worker):
    tg = secrets_for(owner)
    warm_fields(owner)
    mark_synced(owner)
    worker()
    leads_before = set(records(sandbox, "leads"))
    assert _post(client, tg, _update(100, "Хочу записаться")).status_code == 200
    (first,) = wait_done([_requests()[0].public_id])
    assert first.status == "created", first.error
    assert first.outcome == "new"
    assert set(records(sandbox, "leads")) - leads_before == {first.lead_id}
    contact = records(sandbox, "contacts")[first.contact_id]
    assert (contact["first_name"], contact["last_name"]) == ("Алиса", "Котова")
    assert contact_cf(sandbox, first.contact_id)["TELEGRAM_ID"] == ["4242"]
    lead = records(sandbox, "leads")[first.lead_id]
    assert lead["name"].startswith("Telegram: Алиса Котова")
    assert _post(client, tg, _update(101, "А в субботу можно?")).status_code == 200
    second = wait_done([_requests()[1].public_id])[0]
    assert second.status == "created", second.error
    assert second.outcome == "note"
    assert second.lead_id == first.lead_id
    assert set(records(sandbox, "leads")) - leads_before == {first.lead_id}
    texts = [n["params"]["text"] for n in notes_of_lead(sandbox, first.lead_id)]
    assert len(texts) == 2
    assert "Хочу записаться" in texts[0] and "А в субботу можно?" in texts[1]


class FakeBotApi:
    """Answers setWebhook like the Bot API and remembers what it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.reply: dict[str, Any] = {"ok": True, "result": True, "description": "Webhook was set"}
        self.server = make_server("127.0.0.1", 0, self.app)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ, start_response):
        request = Request(environ)
        self.calls.append((request.path, json.loads(request.get_data() or b"{}")))
        status = 200 if self.reply.get("ok") else 401
        return Response(json.dumps(self.reply), status, content_type="application/json")(
            environ, start_response
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def bot_api(app) -> Iterator[FakeBotApi]:
    fake = FakeBotApi()
    fake.thread.start()
    app.config["TELEGRAM_API_BASE"] = fake.url
    yield fake
    fake.server.shutdown()


BOT_TOKEN = "123456789:AAH-fake_bot_token_for_tests_0123456789"


def test_set_webhook_command(runner, client, make_user, bot_api):
    make_user("acme-admin", role="admin", owner="acme")  # no AmoConfig yet: the command makes it
    dry = runner.invoke(
        args=["telegram", "set-webhook", "--owner", "acme", "--bot-token", BOT_TOKEN, "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert BOT_TOKEN not in dry.output and BOT_TOKEN.split(":")[1] not in dry.output
    printed = json.loads(dry.output.split("dry run")[0])
    assert printed["body"]["allowed_updates"] == ["message"]
    assert printed["body"]["url"].startswith("http://127.0.0.1:5000/webhooks/telegram/")
    assert bot_api.calls == []
    assert db.session.scalar(select(AmoConfig.telegram_secret_hash)) is None

    done = runner.invoke(
        args=["telegram", "set-webhook", "--owner", "acme", "--bot-token", BOT_TOKEN]
    )
    assert done.exit_code == 0, done.output
    assert BOT_TOKEN not in done.output
    ((path, body),) = bot_api.calls
    assert path == f"/bot{BOT_TOKEN}/setWebhook"
    assert body["allowed_updates"] == ["message"]
    assert body["secret_token"] and body["url"].startswith(
        "http://127.0.0.1:5000/webhooks/telegram/"
    )
    # The registered URL and header work.
    secret_path = body["url"].rsplit("/", 1)[1]
    ok = client.post(
        f"/webhooks/telegram/{secret_path}",
        json=_update(5, "hi"),
        headers={telegram.HEADER: body["secret_token"]},
    )
    assert ok.status_code == 200
    assert db.session.scalar(select(func.count()).select_from(InboundRequest)) == 1

    bot_api.reply = {"ok": False, "error_code": 401, "description": "Unauthorized"}
    db.session.expire_all()
    before = db.session.scalar(select(AmoConfig.telegram_secret_hash))
    failed = runner.invoke(
        args=["telegram", "set-webhook", "--owner", "acme", "--bot-token", BOT_TOKEN]
    )
    assert failed.exit_code != 0 and "Unauthorized" in failed.output
    db.session.expire_all()
    assert db.session.scalar(select(AmoConfig.telegram_secret_hash)) == before  # old one kept
    unknown = runner.invoke(
        args=["telegram", "set-webhook", "--owner", "nobody", "--bot-token", BOT_TOKEN]
    )
    assert unknown.exit_code != 0
