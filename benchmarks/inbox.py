"""Inbox benchmark: conversations both ways through outages, and the channel hook's latency.

Over loopback on this machine: a fresh PostgreSQL database, Redis db 14 (our own queue only), an
in-process amoCRM sandbox with a Chats API channel and the fake Telegram Bot API, the app under
gunicorn (it receives amojo's channel hooks) and a real Celery worker. Phase one: every
conversation's person writes 5 messages while the Chats API is down for 10 s and Telegram answers
429 to 10% of sends; then a manager answers each conversation 5 times in the sandbox. Counted in
the sandbox: every message in its chat once and in order, every reply at the fake Telegram once
and in order. Phase two: signed channel hooks at 200 per second, acknowledgement p99.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import requests

from benchmarks.__main__ import Row
from benchmarks._support import REDIS, bench_database, celery_worker, free_port, gunicorn
from benchmarks.webhooks import _env, _setup_owner

AREA = "inbox"
CHANNEL = "5d0e7c3a-1f2b-4c5d-8e9f-0a1b2c3d4e5f"
SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
BOT = "555000:bench-bot-token-0123456789abcdefghij"
PER_SIDE = 5


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _setup(env: dict[str, str], sandbox: Any, public_url: str) -> dict[str, Any]:
    """The webhook benchmark's owner (schema, a real code exchange), plus the chat channel."""
    from crm_app.services.chats.channel import connect_channel, save_channel

    setup = _setup_owner(env, sandbox, public_url)
    setup["app"].config["TELEGRAM_API_BASE"] = sandbox.url
    owner_id = setup["owner_id"]
    save_channel(
        owner_id,
        {"channel_id": CHANNEL, "secret": SECRET, "mode": "chat", "telegram_bot_token": BOT},
    )
    connect_channel(owner_id)
    return setup


def _wait(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.25)
    return float("inf")


def _pending() -> int:
    from sqlalchemy import func, select

    from crm_app.extensions import db
    from crm_app.models.chats import ChatMessage, Leg

    db.session.expire_all()
    value = db.session.scalar(
        select(func.count(ChatMessage.id)).where(
            (ChatMessage.to_amo == Leg.PENDING) | (ChatMessage.to_person == Leg.PENDING)
        )
    )
    db.session.commit()
    return int(value or 0)


def _sweeper(stop: threading.Event) -> None:
    """The beat's job in production: re-kick conversations whose retry is due."""
    from crm_app.services.chats.deliver import due_conversations
    from crm_app.services.chats.messages import kick

    while not stop.wait(2.0):
        with suppress(Exception):
            for conversation_id in due_conversations(limit=2000):
                kick(conversation_id)


def _both_ways(sandbox: Any, setup: dict[str, Any], conversations: int) -> list[Row]:
    from crm_app.services.chats.messages import Person, record_from_person

    url = sandbox.url
    owner_id = setup["owner_id"]
    requests.patch(f"{url}/_sandbox/telegram", json={"ratio_429": 0.1, "retry_after": 1}, timeout=5)
    stop = threading.Event()

    def sweep() -> None:
        setup["app"].app_context().push()
        _sweeper(stop)

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    sent_at: dict[str, float] = {}
    started = time.monotonic()
    outage_started = outage_ended = None
    total = conversations * PER_SIDE
    for n in range(PER_SIDE):
        for c in range(conversations):
            text = f"p{c}-{n}"
            sent_at[text] = time.time()
            record_from_person(
                owner_id, Person("telegram", str(100000 + c), f"Person {c}"), text, f"bench:{c}:{n}"
            )
            done = n * conversations + c
            if outage_started is None and done >= total // 3:
                requests.patch(f"{url}/_sandbox/chat-faults", json={"status": 503}, timeout=5)
                outage_started = time.monotonic()
            if outage_ended is None and outage_started and time.monotonic() - outage_started >= 10:
                requests.patch(f"{url}/_sandbox/chat-faults", json={"status": None}, timeout=5)
                outage_ended = time.monotonic()
    if outage_ended is None:
        time.sleep(max(0.0, 10 - (time.monotonic() - (outage_started or time.monotonic()))))
        requests.patch(f"{url}/_sandbox/chat-faults", json={"status": None}, timeout=5)
    drain_in = _wait(lambda: _pending() == 0, 600)
    chats = requests.get(f"{url}/_sandbox/chats", timeout=30).json()["chats"]
    lost = doubled = disordered = 0
    replies_at: dict[str, float] = {}
    for chat in chats:
        view = requests.get(f"{url}/_sandbox/chats/{chat['id']}", timeout=30).json()
        texts = [m["message"]["text"] for m in view["messages"]]
        doubled += len(texts) - len(set(texts))
        prefix = texts[0].split("-")[0] if texts else ""
        expected = [f"{prefix}-{n}" for n in range(PER_SIDE)]
        lost += len(set(expected) - set(texts))
        disordered += texts != expected
        for n in range(PER_SIDE):
            text = f"r-{chat['id'][:8]}-{n}"
            replies_at[text] = time.time()
            requests.post(
                f"{url}/_sandbox/chats/{chat['id']}/reply", json={"text": text}, timeout=30
            )
    lost += max(0, conversations - len(chats)) * PER_SIDE
    replies_drain = _wait(lambda: _pending() == 0, 600)
    stop.set()
    tg = requests.get(f"{url}/_sandbox/telegram/sent", timeout=60).json()["sent"]
    by_chat: dict[int, list[str]] = {}
    to_person: list[float] = []
    for item in tg:
        text = item["message"]["text"]
        by_chat.setdefault(item["chat_id"], []).append(text)
        if text in replies_at:
            to_person.append(item["at"] - replies_at[text])
    r_lost = r_doubled = r_disordered = 0
    for texts in by_chat.values():
        r_doubled += len(texts) - len(set(texts))
        r_disordered += texts != sorted(texts, key=lambda t: int(t.rsplit("-", 1)[1]))
    r_lost = len(chats) * PER_SIDE - sum(len(set(t)) for t in by_chat.values())
    to_chat = _arrivals(sent_at, setup)
    elapsed = time.monotonic() - started
    return [
        Row(
            AREA,
            f"person → chat: {total} messages, lost / doubled / out of order",
            f"{lost} / {doubled} / {disordered}",
            "0 / 0 / 0",
            lost == doubled == disordered == 0,
        ),
        Row(
            AREA,
            "person → chat latency p50 / p95 (Chats API down 10 s)",
            f"{_pct(to_chat, 0.5):.2f} s / {_pct(to_chat, 0.95):.2f} s",
            "reported",
            bool(to_chat),
        ),
        Row(
            AREA,
            f"manager → person: {len(chats) * PER_SIDE} replies, lost / doubled / out of order",
            f"{r_lost} / {r_doubled} / {r_disordered}",
            "0 / 0 / 0",
            r_lost == r_doubled == r_disordered == 0,
        ),
        Row(
            AREA,
            "manager → person latency p50 / p95 (Telegram 429 on 10%)",
            f"{_pct(to_person, 0.5):.2f} s / {_pct(to_person, 0.95):.2f} s",
            "reported",
            bool(to_person),
        ),
        Row(
            AREA,
            "drained after healing / after the replies / whole run",
            f"{drain_in:.1f} s / {replies_drain:.1f} s / {elapsed:.0f} s",
            "finite",
            drain_in != float("inf") and replies_drain != float("inf"),
        ),
    ]


def _arrivals(sent_at: dict[str, float], setup: dict[str, Any]) -> list[float]:
    """From the person's message to its row's SENT (the row's last update)."""
    from sqlalchemy import select

    from crm_app.extensions import db
    from crm_app.models.chats import ChatMessage

    rows = db.session.execute(
        select(ChatMessage.text, ChatMessage.updated_at).where(ChatMessage.direction == "in")
    ).all()
    return [r.updated_at.timestamp() - sent_at[r.text] for r in rows if r.text in sent_at]


def _hook_latency(app_url: str, setup: dict[str, Any], seconds: float, rate: float) -> list[Row]:
    """Open-loop signed hooks at `rate`/s for `seconds`; latency of each acknowledgement."""
    from sqlalchemy import select

    from crm_app.amocrm.chats_signing import webhook_signature
    from crm_app.extensions import db
    from crm_app.models.chats import ChatChannel, Conversation

    ch = db.session.get(ChatChannel, setup["owner_id"])
    assert ch is not None, "the benchmark owner has a chat channel"
    convs = db.session.scalars(select(Conversation).limit(200)).all()
    scope = str(ch.scope_id)
    session = requests.Session()
    session.trust_env = False
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(n: int) -> None:
        nonlocal errors
        conv = convs[n % len(convs)]
        body = json.dumps(
            {
                "account_id": "bench",
                "time": int(time.time()),
                "message": {
                    "receiver": {"id": "r", "client_id": "c"},
                    "sender": {"id": "s"},
                    "conversation": {"id": conv.amojo_chat_id, "client_id": conv.conversation_key},
                    "timestamp": int(time.time()),
                    "msec_timestamp": int(time.time() * 1000),
                    "message": {
                        "id": f"bench-hook-{n}-{time.time_ns()}",
                        "type": "text",
                        "text": f"h{n}",
                    },
                },
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Signature": webhook_signature(SECRET, body),
        }
        began = time.perf_counter()
        try:
            answer = session.post(
                f"{app_url}/webhooks/amojo/{scope}", data=body, headers=headers, timeout=10
            )
            ok = answer.status_code == 200
        except requests.RequestException:
            ok = False
        with lock:
            latencies.append((time.perf_counter() - began) * 1000)
            errors += not ok

    count = int(seconds * rate)
    with ThreadPoolExecutor(max_workers=32) as pool:
        t0 = time.perf_counter()
        for n in range(count):
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, n)
    p99 = _pct(latencies, 0.99)
    return [
        Row(
            AREA,
            f"channel hook ack p50 / p99 at {rate:.0f}/s ({count} hooks, {errors} errors)",
            f"{statistics.median(latencies):.0f} ms / {p99:.0f} ms",
            "p99 < 200 ms",
            p99 < 200 and errors == 0,
        ),
    ]


def run(quick: bool) -> list[Row]:
    """Benchmark rows for `make bench` (quick: 100 conversations, 3 s of hooks)."""
    import redis

    from crm_app.sandbox.server import SandboxServer

    conversations, hook_seconds = (100, 3.0) if quick else (1000, 10.0)
    queue = f"crm-bench-inbox-{os.getpid()}"
    instance = tempfile.mkdtemp(prefix="crm-bench-inbox-")
    sandbox = SandboxServer(
        port=0,
        contacts=20,
        leads=10,
        tasks=0,
        rate_limit=0,
        quiet=True,
        chat_channel_id=CHANNEL,
        chat_secret=SECRET,
    ).start()
    rows: list[Row] = []
    try:
        with bench_database("inbox") as db_url:
            port = free_port()
            env = _env(db_url, instance, queue, sandbox.url)
            env.update({"TELEGRAM_API_BASE": sandbox.url, "PUBLIC_URL": f"http://127.0.0.1:{port}"})
            setup = _setup(env, sandbox, env["PUBLIC_URL"])
            requests.patch(
                f"{sandbox.url}/_sandbox/chat-channels/{CHANNEL}",
                json={"hook_url": env["PUBLIC_URL"] + "/webhooks/amojo/:scope_id"},
                timeout=5,
            )
            try:
                with (
                    gunicorn("wsgi:app", env, port) as app_url,
                    celery_worker(env, queue, instance),
                ):
                    rows += _both_ways(sandbox, setup, conversations)
                    rows += _hook_latency(app_url, setup, hook_seconds, 200.0)
            finally:
                from crm_app.extensions import db

                db.session.remove()
                db.engine.dispose()
                setup["ctx"].pop()
    except Exception as exc:  # a broken environment is a failed row, not a crashed table
        print(f"inbox benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        rows.append(Row(AREA, "benchmark run", f"failed: {type(exc).__name__}", "completes", False))
    finally:
        sandbox.stop()
        with suppress(Exception):
            redis.Redis.from_url(REDIS).delete(queue)
        shutil.rmtree(instance, ignore_errors=True)
    return rows
