"""The chat outbox with real Celery workers: outages on both sides, kill -9, order and counts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import requests
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models.chats import ChatMessage, Conversation, Leg
from crm_app.sandbox.server import SandboxServer
from crm_app.services.chats import intake, messages
from tests.chats.conftest import sandbox_chat, sandbox_chats, telegram_sent
from tests.chats.test_flow import update


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


def pending() -> int:
    return int(
        db.session.scalar(
            select(func.count(ChatMessage.id)).where(
                (ChatMessage.to_amo == Leg.PENDING) | (ChatMessage.to_person == Leg.PENDING)
            )
        )
        or 0
    )


def sweep_until_done(timeout: float = 90.0) -> None:
    """What the beat does every few seconds: re-kick every conversation with something due."""
    from crm_app.services.chats.deliver import due_conversations

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        if pending() == 0:
            return
        for conversation_id in due_conversations():
            messages.kick(conversation_id)
        time.sleep(1.0)
    rows = db.session.scalars(
        select(ChatMessage).where(
            (ChatMessage.to_amo == Leg.PENDING) | (ChatMessage.to_person == Leg.PENDING)
        )
    ).all()
    details = [(m.id, m.to_amo, m.to_person, m.attempts, m.error, m.next_attempt_at) for m in rows]
    raise AssertionError(f"{len(rows)} messages still pending: {details}")


def test_outages_on_both_sides_lose_nothing_and_keep_order(
    app, inbox_owner: int, chat_sandbox: SandboxServer, celery_worker
) -> None:
    worker_env = {"TELEGRAM_API_BASE": chat_sandbox.url}
    celery_worker(name="chats-a", concurrency=4, env=worker_env)
    # The Chats API is down and Telegram throttles a third of the sends.
    requests.patch(f"{chat_sandbox.url}/_sandbox/chat-faults", json={"status": 503}, timeout=5)
    requests.patch(
        f"{chat_sandbox.url}/_sandbox/telegram",
        json={"ratio_429": 0.3, "retry_after": 1},
        timeout=5,
    )
    people = [7001, 7002, 7003]
    for n in range(4):
        for person in people:
            intake.from_telegram(
                inbox_owner, "bot", update(person, f"{person}: {n}", person * 10 + n, n)
            )
    time.sleep(2)
    assert pending() == 12  # nothing reached amoCRM while it was down, nothing was dropped
    requests.patch(f"{chat_sandbox.url}/_sandbox/chat-faults", json={"status": None}, timeout=5)
    sweep_until_done()
    convs = db.session.scalars(select(Conversation)).all()
    for conv in convs:
        for n in range(3):
            messages.record_from_operator(
                inbox_owner, conv.id, f"ответ {conv.external_id} {n}", "op"
            )
    sweep_until_done()
    chats = sandbox_chats(chat_sandbox)
    assert len(chats) == 3
    for chat in chats:
        person = chat["conversation_id"]
        texts = [m["message"]["text"] for m in sandbox_chat(chat_sandbox, chat["id"])["messages"]]
        conv = next(c for c in convs if c.conversation_key == person)
        ext = conv.external_id
        assert texts == [f"{ext}: {n}" for n in range(4)] + [f"ответ {ext} {n}" for n in range(3)]
    for person in people:
        sent = [s["message"]["text"] for s in telegram_sent(chat_sandbox, person)]
        assert sent == [f"ответ {person} {n}" for n in range(3)]
    assert (
        db.session.scalar(
            select(func.count(ChatMessage.id)).where(
                (ChatMessage.to_amo == Leg.FAILED) | (ChatMessage.to_person == Leg.FAILED)
            )
        )
        == 0
    )


def test_kill_9_mid_delivery_neither_loses_nor_doubles(
    app, inbox_owner: int, chat_sandbox: SandboxServer, celery_worker
) -> None:
    # A killed worker's conversation locks expire after 5 s instead of a minute.
    worker_env = {"TELEGRAM_API_BASE": chat_sandbox.url, "CHATS_LOCK_TTL": "5"}
    for n in range(30):
        intake.from_telegram(inbox_owner, "bot", update(8001 + n % 5, f"m{n}", 9000 + n, n))
    first = celery_worker(name="chats-k1", concurrency=2, env=worker_env)
    wait_until(lambda: pending() < 30, timeout=60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    celery_worker(name="chats-k2", concurrency=2, env=worker_env)
    sweep_until_done()
    by_chat = {c["id"]: c for c in sandbox_chats(chat_sandbox)}
    texts = sorted(
        m["message"]["text"]
        for chat_id in by_chat
        for m in sandbox_chat(chat_sandbox, chat_id)["messages"]
    )
    assert texts == sorted(f"m{n}" for n in range(30))
