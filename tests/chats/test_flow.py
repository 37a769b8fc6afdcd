"""The inbox both ways against the sandbox's Chats API and fake Telegram (service level)."""

from __future__ import annotations

import requests
from sqlalchemy import select, text

from crm_app.extensions import db
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation, Leg
from crm_app.sandbox.server import SandboxServer
from crm_app.services.chats import deliver, intake, messages
from tests.chats.conftest import sandbox_chat, sandbox_chats, telegram_sent


def update(user_id: int, text: str, update_id: int, message_id: int) -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": False, "first_name": "Анна", "last_name": "Котова"},
            "chat": {"id": user_id, "type": "private"},
            "date": 1700000000,
            "text": text,
        },
    }


def conversation(owner_id: int) -> Conversation:
    return db.session.scalars(select(Conversation).where(Conversation.owner_id == owner_id)).one()


def test_channel_connect_stores_the_scope_and_keeps_secrets(inbox_owner: int) -> None:
    ch = db.session.get(ChatChannel, inbox_owner)
    assert ch is not None and ch.scope_id and ch.scope_id.startswith(ch.channel_id + "_")
    raw = (
        db.session.execute(
            text("SELECT secret, telegram_bot_token FROM chat_channels WHERE owner_id = :o"),
            {"o": inbox_owner},
        )
        .one()
        ._mapping
    )
    assert "f2d7f8704eff" not in str(raw["secret"])
    assert "sandbox-bot-token" not in str(raw["telegram_bot_token"])


def test_person_messages_reach_the_chat_once_in_order(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    first = intake.from_telegram(inbox_owner, "bot", update(501, "Здравствуйте", 1, 10))
    assert first is not None
    # A redelivered update is stored once.
    assert intake.from_telegram(inbox_owner, "bot", update(501, "Здравствуйте", 1, 10)) is None
    intake.from_telegram(inbox_owner, "bot", update(501, "Сколько стоит доставка?", 2, 11))
    conv = conversation(inbox_owner)
    assert deliver.deliver(conv.id) is None
    chats = sandbox_chats(chat_sandbox)
    assert len(chats) == 1
    thread = sandbox_chat(chat_sandbox, chats[0]["id"])
    assert [m["message"]["text"] for m in thread["messages"]] == [
        "Здравствуйте",
        "Сколько стоит доставка?",
    ]
    rows = db.session.scalars(select(ChatMessage).order_by(ChatMessage.id)).all()
    assert [r.to_amo for r in rows] == [Leg.SENT, Leg.SENT]
    assert all(r.amojo_msgid for r in rows)
    # Delivering again sends nothing twice.
    assert deliver.deliver(conv.id) is None
    assert len(sandbox_chat(chat_sandbox, chats[0]["id"])["messages"]) == 2


def test_a_known_contact_gets_the_chat_linked_and_no_second_contact(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    from crm_app.models.inbound import InboundPerson

    contact_id = chat_sandbox.account.tables["contacts"].records.copy().popitem()[0]
    db.session.add(
        InboundPerson(
            owner_id=inbox_owner,
            channel="telegram",
            external_id="777",
            ref="ref777",
            contact_id=contact_id,
        )
    )
    db.session.commit()
    contacts_before = len(chat_sandbox.account.tables["contacts"].records)
    intake.from_telegram(inbox_owner, "bot", update(777, "Добрый день", 5, 50))
    deliver.deliver(conversation(inbox_owner).id)
    chat = sandbox_chats(chat_sandbox)[0]
    assert chat["contact_id"] == contact_id and chat["lead_id"] is None
    assert len(chat_sandbox.account.tables["contacts"].records) == contacts_before
    assert conversation(inbox_owner).linked


def test_manager_reply_reaches_telegram_and_reports_delivered(
    inbox_owner: int, chat_sandbox: SandboxServer, serve_app
) -> None:
    base = serve_app()
    requests.patch(
        f"{chat_sandbox.url}/_sandbox/chat-channels/{db.session.get(ChatChannel, inbox_owner).channel_id}",
        json={"hook_url": base + "/webhooks/amojo/:scope_id"},
        timeout=5,
    )
    intake.from_telegram(inbox_owner, "bot", update(601, "Когда доставка?", 7, 70))
    conv = conversation(inbox_owner)
    deliver.deliver(conv.id)
    chat_id = sandbox_chats(chat_sandbox)[0]["id"]
    reply = requests.post(
        f"{chat_sandbox.url}/_sandbox/chats/{chat_id}/reply",
        json={"text": "Завтра до обеда"},
        timeout=10,
    ).json()
    assert reply["hook"]["status"] == 200
    db.session.expire_all()
    manager = db.session.scalars(select(ChatMessage).where(ChatMessage.author == "manager")).one()
    assert manager.to_person == Leg.PENDING
    deliver.deliver(conv.id)
    assert [s["message"]["text"] for s in telegram_sent(chat_sandbox, 601)] == ["Завтра до обеда"]
    history = sandbox_chat(chat_sandbox, chat_id)["messages"]
    assert history[-1]["delivery_status"] == "delivered"
    db.session.expire_all()
    assert db.session.get(ChatMessage, manager.id).status_reported


def test_channel_hook_refuses_a_bad_signature_and_stores_nothing(inbox_owner: int, client) -> None:
    scope = db.session.get(ChatChannel, inbox_owner).scope_id
    body = b'{"account_id":"x","time":1,"message":{"message":{"id":"m1","type":"text","text":"hi"},"conversation":{"id":"c"}}}'
    assert (
        client.post(
            f"/webhooks/amojo/{scope}", data=body, headers={"X-Signature": "0" * 40}
        ).status_code
        == 401
    )
    assert client.post(f"/webhooks/amojo/{scope}", data=body).status_code == 401
    assert client.post("/webhooks/amojo/unknown-scope", data=body).status_code == 404
    assert db.session.scalar(select(ChatMessage.id)) is None


def test_telegram_429_waits_retry_after_then_delivers(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    conv_msg = intake.from_telegram(inbox_owner, "bot", update(901, "Привет", 9, 90))
    assert conv_msg is not None
    conv = conversation(inbox_owner)
    deliver.deliver(conv.id)
    reply = messages.record_from_operator(inbox_owner, conv.id, "Здравствуйте, Анна!", "Оператор")
    requests.patch(
        f"{chat_sandbox.url}/_sandbox/telegram", json={"ratio_429": 1, "retry_after": 2}, timeout=5
    )
    wait = deliver.deliver(conv.id)
    assert wait is not None and 1.0 <= wait <= 2.0
    db.session.expire_all()
    row = db.session.get(ChatMessage, reply.id)
    assert row.to_amo == Leg.SENT and row.to_person == Leg.PENDING and row.attempts == 1
    requests.patch(f"{chat_sandbox.url}/_sandbox/telegram", json={"ratio_429": 0}, timeout=5)
    row.next_attempt_at = None
    db.session.commit()
    assert deliver.deliver(conv.id) is None
    assert [s["message"]["text"] for s in telegram_sent(chat_sandbox, 901)] == [
        "Здравствуйте, Анна!"
    ]
    # The reply is in amoCRM's chat too, as an outgoing message.
    thread = sandbox_chat(chat_sandbox, sandbox_chats(chat_sandbox)[0]["id"])["messages"]
    assert thread[-1]["message"]["text"] == "Здравствуйте, Анна!" and "receiver" in thread[-1]


def test_disconnecting_the_account_disconnects_the_channel(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    from crm_app.services.connection import disconnect

    disconnect(inbox_owner)
    db.session.expire_all()
    assert db.session.get(ChatChannel, inbox_owner).scope_id is None
    connections = requests.get(f"{chat_sandbox.url}/_sandbox/chats", timeout=5).json()[
        "connections"
    ]
    assert connections == []
    # Messages are not queued for a channel that is not connected.
    assert intake.from_telegram(inbox_owner, "bot", update(1, "x", 99, 99)) is None


def test_chat_mode_creates_the_deal_but_no_notes(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    from crm_app.services.chats.channel import save_channel
    from crm_app.services.inbound import submit
    from crm_app.services.inbound.runner import process

    ch = db.session.get(ChatChannel, inbox_owner)
    save_channel(inbox_owner, {"channel_id": ch.channel_id, "mode": "chat"})
    payload = {"channel": "widget", "external_id": "v-1", "name": "Пётр", "message": "Только в чат"}
    req = submit(inbox_owner, payload)
    intake.from_widget(inbox_owner, payload, req.public_id)
    process(req.id)
    db.session.refresh(req)
    assert req.status == "created" and req.lead_id
    notes = chat_sandbox.account.tables["notes"].records.values()
    assert not [n for n in notes if "Только в чат" in str(n.get("params"))]
    deliver.deliver(conversation(inbox_owner).id)
    chat = sandbox_chats(chat_sandbox)[0]
    assert chat["contact_id"] == req.contact_id  # the chat joined the contact the deal has
    texts = [m["message"]["text"] for m in sandbox_chat(chat_sandbox, chat["id"])["messages"]]
    assert texts == ["Только в чат"]


def test_a_reply_whose_hook_never_came_is_recovered_from_history(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    from crm_app.services.chats.reconcile import reconcile_recent

    intake.from_telegram(inbox_owner, "bot", update(701, "Алло?", 11, 110))
    conv = conversation(inbox_owner)
    deliver.deliver(conv.id)
    chat_id = sandbox_chats(chat_sandbox)[0]["id"]
    # No hook URL is registered: amojo's one attempt goes nowhere.
    reply = requests.post(
        f"{chat_sandbox.url}/_sandbox/chats/{chat_id}/reply",
        json={"text": "Мы на связи"},
        timeout=10,
    ).json()
    assert reply["hook"]["status"] is None
    assert reconcile_recent() == 1
    assert reconcile_recent() == 0  # found once
    deliver.deliver(conv.id)
    assert [s["message"]["text"] for s in telegram_sent(chat_sandbox, 701)] == ["Мы на связи"]
