"""The inbox in a real browser: a person writes to the bot, a manager answers in amoCRM, an
operator answers from our inbox; every message lands once on the other side, marked delivered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.test_crm_page import _shot
from tests.chats.conftest import (
    BOT_TOKEN,
    CHANNEL,
    SECRET,
    sandbox_chat,
    sandbox_chats,
    telegram_sent,
)

pytestmark = pytest.mark.browser


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("not reached in time")


@pytest.fixture
def inbox_app(app, make_user) -> Iterator[dict[str, Any]]:
    """The app on a free port with a sandbox that has a chat channel and a fake Telegram."""
    from werkzeug.serving import make_server

    from crm_app.extensions import db
    from crm_app.models import AmoConfig
    from crm_app.sandbox import SandboxServer
    from crm_app.services.chats.channel import connect_channel, save_channel
    from crm_app.services.inbound import telegram
    from testkit.sandbox_link import connect_owner_to_sandbox

    server = make_server("127.0.0.1", 0, app, threaded=True)
    public = f"http://127.0.0.1:{server.server_port}"
    app.config["PUBLIC_URL"] = public
    sandbox = SandboxServer(
        port=0,
        contacts=10,
        leads=5,
        tasks=0,
        rate_limit=0,
        chat_channel_id=CHANNEL,
        chat_secret=SECRET,
        chat_hook_url=public + "/webhooks/amojo/:scope_id",
    ).start()
    app.config["TELEGRAM_API_BASE"] = sandbox.url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    owner_id = make_user("operator", role="user", owner="acme").owner_id
    make_user("viewer", role="guest", owner="acme")
    pipeline = sandbox.account.main_pipeline
    connect_owner_to_sandbox(
        owner_id,
        sandbox,
        auto_create_lead=True,
        lead_pipeline_id=pipeline.id,
        lead_status_id=pipeline.first_status().id,
    )
    save_channel(
        owner_id,
        {"channel_id": CHANNEL, "secret": SECRET, "mode": "both", "telegram_bot_token": BOT_TOKEN},
    )
    connect_channel(owner_id)
    cfg = db.session.query(AmoConfig).filter_by(owner_id=owner_id).one()
    setup = telegram.prepare_webhook(BOT_TOKEN)
    telegram.call_set_webhook(setup)
    telegram.store_secret(cfg, setup.secret)
    try:
        yield {"url": public, "sandbox": sandbox, "owner_id": owner_id}
    finally:
        server.shutdown()
        server.server_close()
        sandbox.stop()


def _login(page, url: str, username: str) -> None:
    page.goto(url + "/login")
    page.fill("#login-username", username)
    page.fill("#login-password", "password123")
    page.click("#login-submit")
    page.wait_for_url("**/admin/crm")


def test_inbox_both_ways(app, inbox_app, browser, celery_worker) -> None:
    sandbox = inbox_app["sandbox"]
    celery_worker("inbox", concurrency=2, env={"TELEGRAM_API_BASE": sandbox.url})
    written = requests.post(
        f"{sandbox.url}/_sandbox/telegram/updates",
        json={
            "token": BOT_TOKEN,
            "text": "Здравствуйте! Есть доставка в Казань?",
            "from": {"id": 4242, "first_name": "Анна", "last_name": "Котова"},
        },
        timeout=10,
    ).json()
    assert written["webhook_status"] == 200
    # The message reaches amoCRM's chat (linked to the contact the inbound flow created).
    chat = _until(lambda: (sandbox_chats(sandbox) or [None])[0], 60)
    _until(lambda: sandbox_chat(sandbox, chat["id"])["messages"], 30)

    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ru-RU")
    page = context.new_page()
    _login(page, inbox_app["url"], "operator")
    page.goto(inbox_app["url"] + "/admin/crm/inbox")
    page.get_by_text("Анна Котова").first.click()
    expect(page.locator("#inbox-messages")).to_contain_text("Есть доставка в Казань?")
    expect(page.locator(".inbox-item.is-open")).to_contain_text("Анна Котова")

    # A manager answers in amoCRM: it reaches Telegram and shows delivered in both places.
    requests.post(
        f"{sandbox.url}/_sandbox/chats/{chat['id']}/reply",
        json={"text": "Да, за два дня."},
        timeout=10,
    )
    _until(
        lambda: [
            s for s in telegram_sent(sandbox, 4242) if s["message"]["text"] == "Да, за два дня."
        ]
    )
    expect(page.locator("#inbox-messages li.msg-out").last).to_contain_text(
        "доставлено", timeout=15000
    )
    _until(
        lambda: sandbox_chat(sandbox, chat["id"])["messages"][-1]["delivery_status"] == "delivered"
    )

    # An operator answers from our inbox: the person gets it and amoCRM shows it.
    page.fill("#inbox-reply-text", "Оформить заказ можно прямо здесь.")
    page.click("#inbox-send")
    _until(
        lambda: [
            s
            for s in telegram_sent(sandbox, 4242)
            if s["message"]["text"] == "Оформить заказ можно прямо здесь."
        ]
    )
    _until(
        lambda: (
            sandbox_chat(sandbox, chat["id"])["messages"][-1]["message"]["text"]
            == "Оформить заказ можно прямо здесь."
        )
    )
    expect(page.locator("#inbox-messages li.msg-out").last).to_contain_text(
        "доставлено", timeout=15000
    )
    _shot(page, "inbox")
    en = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US").new_page()
    _login(en, inbox_app["url"], "operator")
    en.goto(page.url + "?lang=en")
    expect(en.locator("#inbox-messages")).to_contain_text("delivered")
    _shot(en, "inbox-en")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, locale="ru-RU").new_page()
    _login(phone, inbox_app["url"], "operator")
    phone.goto(page.url)
    _shot(phone, "inbox-phone")
    lines = phone.eval_on_selector_all(
        "#inbox-messages time", "els => els.map(el => el.getClientRects().length)"
    )
    assert lines and set(lines) == {1}, lines  # a message's time never breaks mid-number

    # A guest reads the thread and finds no way to answer.
    guest = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    _login(guest, inbox_app["url"], "viewer")
    guest.goto(page.url)
    expect(guest.locator("#inbox-messages")).to_contain_text("Оформить заказ")
    assert guest.locator("#inbox-reply-text").count() == 0
