"""The inbox pages: list, thread, reply, ETag polling, RBAC, channel settings."""

from __future__ import annotations

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models.chats import ChatMessage, Conversation, Leg
from crm_app.services.chats import intake
from tests.chats.test_flow import update


def _login(login, make_user, role: str, owner: str = "acme") -> None:
    make_user(f"{role}-{owner}", role=role, owner=owner)
    login(f"{role}-{owner}")


def _csrf(client) -> str:
    import re

    page = client.get("/admin/crm/inbox").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_list_thread_reply_and_etag(client, login, make_user, inbox_owner: int) -> None:
    intake.from_telegram(inbox_owner, "bot", update(321, "Есть ли доставка в Казань?", 3, 30))
    conv = db.session.scalars(select(Conversation)).one()
    _login(login, make_user, "user")
    page = client.get("/admin/crm/inbox")
    assert page.status_code == 200 and "Есть ли доставка в Казань?" in page.get_data(as_text=True)
    etag = page.headers["ETag"]
    poll = client.get("/admin/crm/inbox", headers={"HX-Request": "true", "If-None-Match": etag})
    assert poll.status_code == 304
    thread = client.get(f"/admin/crm/inbox/{conv.id}", headers={"HX-Request": "true"})
    assert thread.status_code == 200 and "inbox-messages" in thread.get_data(as_text=True)
    token = _csrf(client)
    empty = client.post(
        f"/admin/crm/inbox/{conv.id}/reply",
        data={"text": " ", "csrf_token": token},
        headers={"HX-Request": "true"},
    )
    assert empty.status_code == 422
    sent = client.post(
        f"/admin/crm/inbox/{conv.id}/reply",
        data={"text": "Да, за два дня", "csrf_token": token},
        headers={"HX-Request": "true"},
    )
    assert sent.status_code == 200 and "Да, за два дня" in sent.get_data(as_text=True)
    reply = db.session.scalars(select(ChatMessage).where(ChatMessage.author == "operator")).one()
    assert (reply.to_amo, reply.to_person) == (Leg.PENDING, Leg.PENDING)
    # Something changed: the old ETag no longer matches.
    assert (
        client.get(
            "/admin/crm/inbox", headers={"HX-Request": "true", "If-None-Match": etag}
        ).status_code
        == 200
    )


def test_guest_reads_but_cannot_reply_and_other_owners_are_hidden(
    client, login, make_user, inbox_owner: int
) -> None:
    intake.from_telegram(inbox_owner, "bot", update(322, "Привет", 4, 40))
    conv = db.session.scalars(select(Conversation)).one()
    _login(login, make_user, "guest")
    html = client.get(f"/admin/crm/inbox/{conv.id}").get_data(as_text=True)
    assert "Привет" in html and "inbox-reply-text" not in html
    token = _csrf(client)
    denied = client.post(
        f"/admin/crm/inbox/{conv.id}/reply", data={"text": "x", "csrf_token": token}
    )
    assert denied.status_code == 403
    _login(login, make_user, "user", owner="globex")
    assert client.get(f"/admin/crm/inbox/{conv.id}").status_code == 404
    assert "Привет" not in client.get("/admin/crm/inbox").get_data(as_text=True)
    assert client.get("/admin/crm/inbox/99999999999999999999").status_code == 404


def test_channel_settings_validate_and_never_show_secrets(
    client, login, make_user, inbox_owner: int
) -> None:
    _login(login, make_user, "user")
    panel = client.get("/admin/crm/ui/chat-channel", headers={"HX-Request": "true"})
    html = panel.get_data(as_text=True)
    assert "канал подключён" in html
    assert "f2d7f8704eff" not in html and "sandbox-bot-token" not in html
    token = _csrf(client)
    bad = client.post(
        "/admin/crm/ui/chat-channel",
        data={"channel_id": "no", "mode": "x", "csrf_token": token},
        headers={"HX-Request": "true"},
    )
    assert bad.status_code == 422
    assert "field-error" in bad.get_data(as_text=True)


def test_channel_errors_speak_the_page_language(client, login, make_user, inbox_owner: int) -> None:
    """The card's field errors are in Russian, and in English on the English page."""
    _login(login, make_user, "user")
    token = _csrf(client)
    form = {"channel_id": "no", "bot_id": "demo-bot", "mode": "x", "csrf_token": token}
    hx = {"HX-Request": "true"}
    ru = client.post("/admin/crm/ui/chat-channel", data=form, headers=hx).get_data(as_text=True)
    assert "ID канала, который выдал amoCRM (UUID)" in ru
    assert "ID бота, который выдал amoCRM (UUID)" in ru
    assert "Выберите, куда писать сообщения" in ru
    client.get("/admin/crm/inbox?lang=en")
    en = client.post("/admin/crm/ui/chat-channel", data=form, headers=hx).get_data(as_text=True)
    assert "The channel id amoCRM issued (a UUID)" in en
    assert "ID канала" not in en
