"""A fake Telegram Bot API on the sandbox's port, for tests and the demo (``TELEGRAM_API_BASE``).

It answers the methods the service uses the way https://core.telegram.org/bots/api documents
them (``{"ok": true, "result": ...}``; errors as ``{"ok": false, "error_code", "description",
"parameters": {"retry_after"}}``), records what bots sent, and lets a test play a person who
writes to a bot: ``POST /_sandbox/telegram/updates`` delivers an ``Update`` to the webhook the
bot registered with ``setWebhook`` (with its ``X-Telegram-Bot-Api-Secret-Token``).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Blueprint, Response, current_app, request

from crm_app.sandbox import errors

bp = Blueprint("sandbox_telegram", __name__)
SEND_METHODS = ("sendMessage", "sendPhoto", "sendDocument")


@dataclass
class Bot:
    token: str
    id: int
    username: str
    webhook_url: str = ""
    secret_token: str = ""


@dataclass
class TelegramFake:
    """Bots by token, what they sent, and the faults a test switched on."""

    bots: dict[str, Bot] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    blocked_chats: set[int] = field(default_factory=set)
    ratio_429: float = 0.0
    retry_after: int = 1
    down: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    lock: threading.Lock = field(default_factory=threading.Lock)
    message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100_000))

    def bot(self, token: str) -> Bot | None:
        if ":" not in token or not token.split(":", 1)[0].isdigit():
            return None
        with self.lock:
            found = self.bots.get(token)
            if found is None:
                bot_id = int(token.split(":", 1)[0])
                found = self.bots[token] = Bot(token, bot_id, f"sandbox_{bot_id}_bot")
            return found


def fake() -> TelegramFake:
    found: TelegramFake = current_app.config["SANDBOX"].telegram
    return found


def _fail(code: int, description: str, **parameters: Any) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return errors.json_response(body, code)


def _ok(result: Any) -> Response:
    return errors.json_response({"ok": True, "result": result})


def _params() -> dict[str, Any]:
    """Bot API methods take a query string, form fields or a JSON body alike."""
    values: dict[str, Any] = dict(request.args.items())
    values.update(request.form.items())
    body = request.get_json(silent=True)
    if isinstance(body, dict):
        values.update(body)
    return values


@bp.route("/bot<token>/<method>", methods=["GET", "POST"])
def bot_api(token: str, method: str) -> Response:
    tg = fake()
    if tg.down:
        return Response(b"Bad Gateway", status=502, content_type="text/html")
    bot = tg.bot(token)
    if bot is None:
        return _fail(401, "Unauthorized")
    values = _params()
    if method == "getMe":
        return _ok(
            {"id": bot.id, "is_bot": True, "first_name": "Sandbox bot", "username": bot.username}
        )
    if method == "setWebhook":
        bot.webhook_url = str(values.get("url") or "")
        bot.secret_token = str(values.get("secret_token") or "")
        return errors.json_response({"ok": True, "result": True, "description": "Webhook was set"})
    if method == "deleteWebhook":
        bot.webhook_url = ""
        return _ok(True)
    if method == "getWebhookInfo":
        return _ok(
            {"url": bot.webhook_url, "has_custom_certificate": False, "pending_update_count": 0}
        )
    if method in SEND_METHODS:
        return _send(tg, bot, method, values)
    return _fail(404, "Not Found: method not found")


def _send(tg: TelegramFake, bot: Bot, method: str, values: dict[str, Any]) -> Response:
    chat_id = values.get("chat_id")
    try:
        chat = int(str(chat_id))
    except ValueError:
        return _fail(400, "Bad Request: chat not found")
    with tg.lock:
        throttled = tg.ratio_429 > 0 and tg.rng.random() < tg.ratio_429
    if throttled:
        return _fail(
            429, f"Too Many Requests: retry after {tg.retry_after}", retry_after=tg.retry_after
        )
    if chat in tg.blocked_chats:
        return _fail(403, "Forbidden: bot was blocked by the user")
    content_key = {"sendMessage": "text", "sendPhoto": "photo", "sendDocument": "document"}[method]
    content = values.get(content_key)
    if not content:
        return _fail(400, f"Bad Request: {content_key} is empty")
    message: dict[str, Any] = {
        "message_id": next(tg.message_ids),
        "from": {
            "id": bot.id,
            "is_bot": True,
            "first_name": "Sandbox bot",
            "username": bot.username,
        },
        "chat": {"id": chat, "type": "private"},
        "date": int(time.time()),
    }
    if method == "sendMessage":
        message["text"] = str(content)
    else:
        message[content_key] = str(content)
        if values.get("caption"):
            message["caption"] = str(values["caption"])
    with tg.lock:
        tg.sent.append(
            {
                "token_id": bot.id,
                "method": method,
                "chat_id": chat,
                "message": message,
                "at": time.time(),
            }
        )
    return _ok(message)


# --- /_sandbox/telegram: a person who writes, what bots sent, faults ---------------------------
@bp.post("/_sandbox/telegram/updates")
def person_writes() -> Response:
    """Deliver one private message from a person to a bot's webhook; answers what it got."""
    tg = fake()
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body.get("token") or not body.get("text"):
        return errors.problem(400, "token and text are required")
    bot = tg.bot(str(body["token"]))
    if bot is None or not bot.webhook_url:
        return errors.problem(409, "the bot has no webhook set")
    raw_person = body.get("from")
    person = raw_person if isinstance(raw_person, dict) else {}
    user = {
        "id": int(person.get("id", 1000001)),
        "is_bot": False,
        "first_name": str(person.get("first_name", "Иван")),
    }
    for key in ("last_name", "username", "language_code"):
        if person.get(key):
            user[key] = str(person[key])
    message_id = next(tg.message_ids)
    update: dict[str, Any] = {
        "update_id": next(tg.update_ids),
        "message": {
            "message_id": message_id,
            "from": user,
            "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
            "date": int(time.time()),
            "text": str(body["text"]),
        },
    }
    headers = {"Content-Type": "application/json"}
    if bot.secret_token:
        headers["X-Telegram-Bot-Api-Secret-Token"] = bot.secret_token
    try:
        with requests.Session() as session:
            session.trust_env = False
            answer = session.post(bot.webhook_url, json=update, headers=headers, timeout=10)
        status: int | None = answer.status_code
    except requests.RequestException:
        status = None
    return errors.json_response({"update": update, "webhook_status": status})


@bp.get("/_sandbox/telegram/sent")
def sent() -> Response:
    tg = fake()
    chat = request.args.get("chat_id")
    with tg.lock:
        items = [s for s in tg.sent if chat is None or str(s["chat_id"]) == chat]
    return errors.json_response({"sent": items})


@bp.patch("/_sandbox/telegram")
def faults() -> Response:
    """``{"ratio_429": 0.1, "retry_after": 1, "down": false, "blocked_chats": [id, ...]}``."""
    tg = fake()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return errors.problem(400, "a JSON object is required")
    with tg.lock:
        if "ratio_429" in body:
            tg.ratio_429 = min(1.0, max(0.0, float(body["ratio_429"])))
        if "retry_after" in body:
            tg.retry_after = max(0, int(body["retry_after"]))
        if "down" in body:
            tg.down = bool(body["down"])
        if "blocked_chats" in body:
            tg.blocked_chats = {int(c) for c in body["blocked_chats"]}
        if body.get("clear"):
            tg.sent.clear()
        state = {
            "ratio_429": tg.ratio_429,
            "retry_after": tg.retry_after,
            "down": tg.down,
            "blocked_chats": sorted(tg.blocked_chats),
        }
    return errors.json_response(state)
