"""The channel hook's PostgreSQL fast path answers exactly as the Flask view does, and kicks."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from sqlalchemy import delete, select, update

from crm_app.amocrm.chats_signing import webhook_signature
from crm_app.extensions import db
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation
from crm_app.sandbox.server import SandboxServer
from crm_app.services.chats import intake
from crm_app.web import chats_hook
from tests.chats.conftest import SECRET, sandbox_chats, telegram_sent
from tests.chats.test_flow import update as tg_update


def hook(msg: dict[str, Any] | None, conversation: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {"account_id": "acc", "time": 1700000000}
    if msg is None:
        body["action"] = {"typing": {"conversation": conversation}}
    else:
        body["message"] = {
            "receiver": {"id": "r"},
            "sender": {"id": "s", "name": "Ольга"},
            "conversation": conversation,
            "timestamp": 1700000000,
            "message": msg,
        }
    return json.dumps(body).encode()


def sequence(scope: str, key: str, ref: str) -> list[tuple[bytes, str, str | None]]:
    """(body, path scope, signature) of every case; the body is signed unless said otherwise."""
    text = {"id": "m-1", "type": "text", "text": "Завтра до обеда"}
    by_ref = {"id": "m-2", "type": "text", "text": "По ссылке на чат"}
    picture = {"id": "m-3", "type": "picture", "media": "https://x.example/p.png", "file_size": 5}
    cases: list[tuple[bytes, str, str | None]] = []
    for body in (
        hook(text, {"client_id": key}),
        hook(text, {"client_id": key}),  # amojo sends the same message id again
        hook(by_ref, {"id": ref}),
        hook(None, {"client_id": key}),  # typing: acknowledged, nothing stored
        hook({"id": "m-4", "type": "text", "text": "?"}, {"client_id": "c-nobody"}),
        hook(picture, {"client_id": key, "id": ref}),
        hook({"id": "m-7", "type": "text", "text": "NUL\u0000inside"}, {"client_id": key}),
        b"not json",
        b"[1, 2]",
    ):
        cases.append((body, scope, webhook_signature(SECRET, body)))
    body = hook({"id": "m-5", "type": "text", "text": "x"}, {"client_id": key})
    cases.append((body, scope, "0" * 40))  # wrong signature
    cases.append((body, scope, None))  # no signature
    cases.append((body, "unknown-scope", webhook_signature(SECRET, body)))
    big = hook({"id": "m-6", "type": "text", "text": "x" * 300_000}, {"client_id": key})
    cases.append((big, scope, webhook_signature(SECRET, big)))
    return cases


def answers(client, cases: list[tuple[bytes, str, str | None]]) -> list[tuple[int, Any]]:
    out = []
    for body, scope, signature in cases:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Signature"] = signature
        resp = client.post(f"/webhooks/amojo/{scope}", data=body, headers=headers)
        payload = resp.get_json(silent=True) or {}
        out.append((resp.status_code, payload.get("stored", payload.get("detail"))))
    return out


def stored(owner_id: int) -> list[tuple[Any, ...]]:
    db.session.expire_all()
    rows = db.session.scalars(
        select(ChatMessage).where(ChatMessage.author == "manager").order_by(ChatMessage.id)
    ).all()
    conv = db.session.scalars(select(Conversation).where(Conversation.owner_id == owner_id)).one()
    fields = "conversation_id author_name text media amojo_msgid source_key to_amo to_person"
    fields += " direction"
    return [tuple(getattr(m, f) for f in fields.split()) for m in rows] + [
        ("preview", conv.last_text)
    ]


def test_fast_path_and_view_answer_and_store_alike(
    app, inbox_owner: int, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake.from_telegram(inbox_owner, "bot", tg_update(801, "Здравствуйте", 1, 1))
    conv = db.session.scalars(select(Conversation)).one()
    conv.amojo_chat_id = "amojo-chat-801"
    db.session.commit()
    scope = str(db.session.get(ChatChannel, inbox_owner).scope_id)
    cases = sequence(scope, conv.conversation_key, "amojo-chat-801")
    through_view: list[str] = []
    real = chats_hook.channel_hook

    def counted(*args: Any) -> Any:
        through_view.append(args[0])
        return real(*args)

    monkeypatch.setattr(chats_hook, "channel_hook", counted)

    fast = answers(client, cases)
    fast_rows = stored(inbox_owner)
    assert through_view == []  # PostgreSQL: every hook was answered before Flask's view

    db.session.execute(delete(ChatMessage).where(ChatMessage.author == "manager"))
    db.session.execute(update(Conversation).values(last_text="Здравствуйте"))
    db.session.commit()
    app.config["WEBHOOK_FAST_PATH"] = False
    slow = answers(client, cases)
    assert len(through_view) == len(cases) - 1  # all but the 413, refused before the view
    assert slow == fast
    assert stored(inbox_owner) == fast_rows
    assert [a[0] for a in fast] == [200] * 7 + [400, 400, 401, 401, 404, 413]
    assert [a[1] for a in fast[:7]] == [True, False, True, False, False, True, True]
    assert [r[4] for r in fast_rows[:-1]] == ["m-1", "m-2", "m-3", "m-7"]
    assert fast_rows[3][2] == "NULinside"  # PostgreSQL text cannot hold NUL: dropped, not a 500
    assert fast_rows[2][3] == {
        "type": "picture",
        "media": "https://x.example/p.png",
        "file_size": 5,
    }
    assert fast_rows[-1] == ("preview", "NULinside")


def test_a_reply_taken_by_the_fast_path_reaches_telegram_through_the_worker(
    app, inbox_owner: int, chat_sandbox: SandboxServer, serve_app, celery_worker
) -> None:
    celery_worker(name="chats-hook", concurrency=2, env={"TELEGRAM_API_BASE": chat_sandbox.url})
    base = serve_app()
    channel = db.session.get(ChatChannel, inbox_owner)
    requests.patch(
        f"{chat_sandbox.url}/_sandbox/chat-channels/{channel.channel_id}",
        json={"hook_url": base + "/webhooks/amojo/:scope_id"},
        timeout=5,
    )
    intake.from_telegram(inbox_owner, "bot", tg_update(802, "Когда привезут?", 2, 2))
    deadline = time.monotonic() + 60
    while not sandbox_chats(chat_sandbox) and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker posts the person's message; the chat appears in amoCRM
    chat_id = sandbox_chats(chat_sandbox)[0]["id"]
    reply = requests.post(
        f"{chat_sandbox.url}/_sandbox/chats/{chat_id}/reply", json={"text": "В пятницу"}, timeout=10
    ).json()
    assert reply["hook"]["status"] == 200
    # Nobody calls deliver here and no beat runs: only the fast path's kick can bring it out.
    while time.monotonic() < deadline:
        if [s["message"]["text"] for s in telegram_sent(chat_sandbox, 802)] == ["В пятницу"]:
            break
        time.sleep(0.2)
    assert [s["message"]["text"] for s in telegram_sent(chat_sandbox, 802)] == ["В пятницу"]
