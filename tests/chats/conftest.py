"""Inbox fixtures: a sandbox with a Chats API channel, an owner connected to both, a live app."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from crm_app.sandbox.server import SandboxServer
from tests.webhooks.conftest import serve_app  # noqa: F401  (the live-app fixture)

CHANNEL = "344a5002-f8ca-454d-af3d-396180102ac7"
SECRET = "f2d7f8704eff95087ed45b23ba99c0b5aac8278e"
BOT_TOKEN = "987654:sandbox-bot-token-0123456789abcdef"


@pytest.fixture
def chat_sandbox(make_sandbox) -> SandboxServer:
    server: SandboxServer = make_sandbox(
        contacts=10, leads=5, tasks=0, rate_limit=0, chat_channel_id=CHANNEL, chat_secret=SECRET
    )
    return server


@pytest.fixture
def inbox_owner(app, make_user, chat_sandbox: SandboxServer) -> int:
    """An owner connected to the sandbox, Auto Create Lead on, the channel connected."""
    from crm_app.services.chats.channel import connect_channel, save_channel
    from testkit.sandbox_link import connect_owner_to_sandbox

    owner_id: int = make_user("inbox-admin", role="admin", owner="acme").owner_id
    pipeline = chat_sandbox.account.main_pipeline
    connect_owner_to_sandbox(
        owner_id,
        chat_sandbox,
        auto_create_lead=True,
        lead_pipeline_id=pipeline.id,
        lead_status_id=pipeline.first_status().id,
    )
    app.config["TELEGRAM_API_BASE"] = chat_sandbox.url
    save_channel(
        owner_id,
        {"channel_id": CHANNEL, "secret": SECRET, "mode": "both", "telegram_bot_token": BOT_TOKEN},
    )
    connect_channel(owner_id)
    return owner_id


def sandbox_chats(server: SandboxServer) -> list[dict[str, Any]]:
    chats: list[dict[str, Any]] = requests.get(f"{server.url}/_sandbox/chats", timeout=5).json()[
        "chats"
    ]
    return chats


def sandbox_chat(server: SandboxServer, chat_id: str) -> dict[str, Any]:
    found: dict[str, Any] = requests.get(f"{server.url}/_sandbox/chats/{chat_id}", timeout=5).json()
    return found


def telegram_sent(server: SandboxServer, chat_id: int) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = requests.get(
        f"{server.url}/_sandbox/telegram/sent?chat_id={chat_id}", timeout=5
    ).json()["sent"]
    return sent
