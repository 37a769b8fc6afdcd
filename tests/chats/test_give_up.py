"""A message waits out an outage of any length (up to a day), and only then is marked failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import select, update

from crm_app.extensions import db
from crm_app.models.chats import ChatMessage, Conversation, Leg
from crm_app.sandbox.server import SandboxServer
from crm_app.services.chats import deliver, intake
from tests.chats.test_flow import update as tg_update


def _message() -> ChatMessage:
    db.session.expire_all()
    return db.session.scalars(select(ChatMessage)).one()


def test_a_long_chats_api_outage_keeps_the_message_then_a_day_gives_up(
    inbox_owner: int, chat_sandbox: SandboxServer
) -> None:
    requests.patch(f"{chat_sandbox.url}/_sandbox/chat-faults", json={"status": 503}, timeout=5)
    intake.from_telegram(inbox_owner, "bot", tg_update(901, "Есть кто?", 1, 1))
    conv = db.session.scalars(select(Conversation)).one()
    for _ in range(30):  # far more tries than an outage of minutes costs
        db.session.execute(update(ChatMessage).values(next_attempt_at=None))
        db.session.commit()
        assert deliver.deliver(conv.id) is not None
    msg = _message()
    assert (msg.to_amo, msg.attempts) == (Leg.PENDING, 30)
    assert msg.error and "amoCRM" in msg.error

    # Healed: it goes out, once.
    requests.patch(f"{chat_sandbox.url}/_sandbox/chat-faults", json={"status": None}, timeout=5)
    db.session.execute(update(ChatMessage).values(next_attempt_at=None))
    db.session.commit()
    assert deliver.deliver(conv.id) is None
    assert _message().to_amo == Leg.SENT

    # A second message during a second outage, a day old when it is tried again: given up.
    requests.patch(f"{chat_sandbox.url}/_sandbox/chat-faults", json={"status": 503}, timeout=5)
    intake.from_telegram(inbox_owner, "bot", tg_update(901, "Алло?", 2, 2))
    day_ago = datetime.now(UTC) - timedelta(hours=24, minutes=1)
    db.session.execute(
        update(ChatMessage)
        .where(ChatMessage.to_amo == Leg.PENDING)
        .values(created_at=day_ago, next_attempt_at=None)
    )
    db.session.commit()
    assert deliver.deliver(conv.id) is None
    db.session.expire_all()
    late = db.session.scalars(select(ChatMessage).where(ChatMessage.text == "Алло?")).one()
    assert late.to_amo == Leg.FAILED and late.error
