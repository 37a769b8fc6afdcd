"""The fake Telegram Bot API served next to the sandbox."""

from __future__ import annotations

import json
from typing import Any

import requests

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Receiver

TOKEN = "123456:test-token"


def call(sandbox: SandboxServer, method: str, **params: Any) -> requests.Response:
    return requests.post(f"{sandbox.url}/bot{TOKEN}/{method}", json=params, timeout=5)


def test_send_message_is_recorded_and_answers_like_the_bot_api(sandbox: SandboxServer) -> None:
    reply = call(sandbox, "sendMessage", chat_id=42, text="Здравствуйте")
    assert reply.status_code == 200
    result = reply.json()["result"]
    assert result["chat"]["id"] == 42 and result["text"] == "Здравствуйте"
    sent = requests.get(f"{sandbox.url}/_sandbox/telegram/sent?chat_id=42", timeout=5).json()
    assert [s["message"]["text"] for s in sent["sent"]] == ["Здравствуйте"]
    assert requests.post(f"{sandbox.url}/botnope/getMe", timeout=5).status_code == 401


def test_faults_429_with_retry_after_blocked_and_down(sandbox: SandboxServer) -> None:
    requests.patch(
        f"{sandbox.url}/_sandbox/telegram", json={"ratio_429": 1, "retry_after": 3}, timeout=5
    )
    reply = call(sandbox, "sendMessage", chat_id=1, text="x")
    assert reply.status_code == 429
    assert reply.json()["parameters"]["retry_after"] == 3
    requests.patch(
        f"{sandbox.url}/_sandbox/telegram", json={"ratio_429": 0, "blocked_chats": [1]}, timeout=5
    )
    reply = call(sandbox, "sendMessage", chat_id=1, text="x")
    assert reply.status_code == 403 and "blocked" in reply.json()["description"]
    requests.patch(f"{sandbox.url}/_sandbox/telegram", json={"down": True}, timeout=5)
    assert call(sandbox, "sendMessage", chat_id=2, text="x").status_code == 502


def test_a_person_writes_to_the_bot_webhook(sandbox: SandboxServer, receiver: Receiver) -> None:
    assert call(sandbox, "setWebhook", url=receiver.url, secret_token="s3cr3t").json()["ok"]
    answer = requests.post(
        f"{sandbox.url}/_sandbox/telegram/updates",
        json={"token": TOKEN, "text": "Привет", "from": {"id": 77, "first_name": "Анна"}},
        timeout=5,
    ).json()
    assert answer["webhook_status"] == 200
    got = receiver.wait(1)[0]
    assert got.headers["X-Telegram-Bot-Api-Secret-Token"] == "s3cr3t"
    update = json.loads(got.body)
    assert update["message"]["from"]["id"] == 77 and update["message"]["text"] == "Привет"
