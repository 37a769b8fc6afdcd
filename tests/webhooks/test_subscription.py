"""The per-owner URL secret, subscribing through the API, and the admin card."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, text, update

from crm_app.extensions import db
from crm_app.models import AmoConfig
from crm_app.services.webhooks import (
    ensure_webhook_token,
    subscribe,
    subscription_state,
    unsubscribe,
    webhook_url,
)
from crm_app.services.webhooks.subscription import token_hash
from tests.webhooks.conftest import Owner, connect_owner


def _hooks(owner: Owner) -> list[dict]:
    from crm_app.services.amo import client_for_owner

    with client_for_owner(owner.id) as client:
        return client.list_webhooks()


def _cfg(owner_id: int) -> AmoConfig:
    db.session.expire_all()
    return db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))


# -- the secret ----------------------------------------------------------------------------------


def test_token_is_stable_hashed_and_encrypted(owner: Owner) -> None:
    token = ensure_webhook_token(owner.id)
    assert token == owner.token and ensure_webhook_token(owner.id) == token
    assert len(token) >= 40
    cfg = _cfg(owner.id)
    assert cfg.webhook_token_hash == token_hash(token)
    stored = db.session.execute(
        text("SELECT webhook_token FROM amocrm_configs WHERE owner_id = :o"), {"o": owner.id}
    ).scalar()
    assert token not in stored  # ciphertext at rest


def test_tokens_differ_per_owner(app, owner: Owner) -> None:
    from crm_app.commands.users import get_or_create_owner

    other = get_or_create_owner("second").id
    db.session.commit()
    assert ensure_webhook_token(other) != owner.token


def test_webhook_url_uses_public_url(app, owner: Owner) -> None:
    app.config["PUBLIC_URL"] = "https://crm.example.org/"
    assert webhook_url(owner.id) == f"https://crm.example.org/webhooks/amocrm/{owner.token}"


# -- subscribing ---------------------------------------------------------------------------------


def test_subscribe_registers_our_url_with_the_events_the_flags_need(owner: Owner) -> None:
    state = subscribe(owner.id)
    assert state["subscribed"] is True and state["error"] is None
    [hook] = _hooks(owner)
    assert hook["destination"] == webhook_url(owner.id)
    assert set(hook["settings"]) >= {
        "add_lead",
        "update_lead",
        "delete_lead",
        "status_lead",
        "add_contact",
        "update_contact",
        "delete_contact",
        "add_task",
        "update_task",
        "delete_task",
    }
    assert _cfg(owner.id).webhook_subscribed is True

    db.session.execute(
        update(AmoConfig).where(AmoConfig.owner_id == owner.id).values(sync_tasks=False)
    )
    db.session.commit()
    subscribe(owner.id)
    [hook] = _hooks(owner)  # updated in place, not duplicated
    assert not any(s.endswith("_task") for s in hook["settings"])
    assert "status_lead" in hook["settings"]


def test_unsubscribe_removes_the_hook(owner: Owner) -> None:
    subscribe(owner.id)
    assert unsubscribe(owner.id) == {"unsubscribed": True, "error": None}
    assert _hooks(owner) == []
    assert _cfg(owner.id).webhook_subscribed is False


def test_disconnect_unsubscribes(owner: Owner) -> None:
    from crm_app.services.connection import disconnect

    subscribe(owner.id)
    disconnect(owner.id)
    assert owner.server.account.webhooks == {} or all(
        h.get("deleted") for h in owner.server.account.webhooks.values()
    )


def test_no_admin_rights_means_manual_set_up(app, sandbox) -> None:
    manager = next(u for u in sandbox.account.users if not u.is_admin)
    owner_id = connect_owner(sandbox, "managers", user_id=manager.id)
    state = subscribe(owner_id)
    assert state["subscribed"] is False and state["manual"] is True
    cfg = _cfg(owner_id)
    assert cfg.webhook_subscribed is False
    assert cfg.webhook_error.startswith("subscribe manually")
    # A rights problem is not an outage: the connection badge stays as it was.
    assert cfg.status == "connected"
    assert subscription_state(owner_id)["manual"] is True


@pytest.mark.parametrize("status", [402, 403])
def test_refusals_are_recorded_not_raised(owner: Owner, status: int) -> None:
    owner.sandbox("POST", "faults", json={"path": "/api/v4/webhooks", "status": status, "count": 1})
    state = subscribe(owner.id)
    assert state["manual"] is True and state["subscribed"] is False
    assert f"HTTP {status}" in _cfg(owner.id).webhook_error


def test_outage_is_recorded(owner: Owner) -> None:
    owner.sandbox("POST", "faults", json={"path": "/api/v4/webhooks", "status": 500, "count": 10})
    state = subscribe(owner.id)
    assert state["subscribed"] is False and state["manual"] is False
    assert state["error"].startswith("amoCRM")


def test_not_connected_owner(app) -> None:
    from crm_app.commands.users import get_or_create_owner

    owner_id = get_or_create_owner("lonely").id
    db.session.commit()
    state = subscribe(owner_id)
    assert state["subscribed"] is False and "not connected" in state["error"]


# -- the admin card --------------------------------------------------------------------------------


def _csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_card_for_an_admin_shows_the_url_and_the_button(owner: Owner, make_user, login) -> None:
    make_user("boss", role="admin", owner="acme")
    login("boss")
    owner.post(owner.body({"leads": {"add": [{"id": "1"}]}}))
    resp = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert owner.token in html
    assert 'id="webhooks-subscribe"' in html
    assert "Настройки → Интеграции → Вебхуки" in html
    assert 'data-count="total">1<' in html
    assert "<script" not in html


def test_guest_sees_the_card_without_secret_and_cannot_subscribe(
    owner: Owner, make_user, login
) -> None:
    make_user("viewer", role="guest", owner="acme")
    login("viewer")
    resp = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert owner.token not in html
    assert 'id="webhooks-subscribe"' not in html
    token = _csrf_from(owner.client.get("/login").get_data(as_text=True))
    resp = owner.client.post(
        "/admin/crm/ui/webhooks/subscribe",
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )
    assert resp.status_code == 403
    assert _hooks(owner) == []


def test_subscribe_button(owner: Owner, make_user, login) -> None:
    make_user("boss", role="admin", owner="acme")
    login("boss")
    html = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )
    token = _csrf_from(html)
    # No CSRF token: refused.
    resp = owner.client.post("/admin/crm/ui/webhooks/subscribe", headers={"HX-Request": "true"})
    assert resp.status_code == 400
    resp = owner.client.post(
        "/admin/crm/ui/webhooks/subscribe",
        data={"csrf_token": token},
        headers={"HX-Request": "true"},
    )
    assert resp.status_code == 200
    assert 'id="webhooks-message"' in resp.get_data(as_text=True)
    assert "Переподписать" in resp.get_data(as_text=True)
    [hook] = _hooks(owner)
    assert hook["destination"].endswith(owner.token)
    # Without JavaScript the form posts and is sent back to the page.
    resp = owner.client.post("/admin/crm/ui/webhooks/subscribe", data={"csrf_token": token})
    assert resp.status_code == 303


def test_card_needs_login_and_respects_owners(owner: Owner, make_user, login) -> None:
    resp = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"})
    assert resp.status_code == 401 and "HX-Redirect" in resp.headers
    assert owner.client.get("/admin/crm/ui/webhooks").status_code == 302
    make_user("stranger", role="user", owner="other")
    login("stranger")
    resp = owner.client.get(f"/admin/crm/ui/webhooks?owner_id={owner.id}")
    assert resp.status_code == 404
    html = owner.client.get("/admin/crm/ui/webhooks").get_data(as_text=True)
    assert owner.token not in html  # their own card, not acme's


def test_admin_may_look_at_another_owner(owner: Owner, make_user, login) -> None:
    make_user("root", role="admin", owner="hq")
    login("root")
    resp = owner.client.get(f"/admin/crm/ui/webhooks?owner_id={owner.id}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert owner.token in html
    assert f"/admin/crm/ui/webhooks/subscribe?owner_id={owner.id}" in html


def _press(owner: Owner, button: str, action: str):
    """The card as its admin sees it, with `button` on it, and the answer to pressing it."""
    html = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )
    assert f'id="{button}"' in html
    return owner.client.post(
        action, data={"csrf_token": _csrf_from(html)}, headers={"HX-Request": "true"}
    )


def test_rotating_the_url_moves_the_subscription_and_the_old_url_stops_working(
    owner: Owner, make_user, login
) -> None:
    subscribe(owner.id)
    old = owner.token
    make_user("viewer", role="guest", owner="acme")
    login("viewer")
    html = owner.client.get("/admin/crm/ui/webhooks", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )
    assert 'id="webhooks-rotate"' not in html
    token = _csrf_from(owner.client.get("/login").get_data(as_text=True))
    resp = owner.client.post(
        "/admin/crm/ui/webhooks/rotate", headers={"HX-Request": "true", "X-CSRFToken": token}
    )
    assert resp.status_code == 403
    assert ensure_webhook_token(owner.id) == old

    make_user("boss", role="admin", owner="acme")
    login("boss")
    resp = _press(owner, "webhooks-rotate", "/admin/crm/ui/webhooks/rotate")
    assert resp.status_code == 200
    new = ensure_webhook_token(owner.id)
    assert new != old and new in resp.get_data(as_text=True)
    assert 'id="webhooks-message"' in resp.get_data(as_text=True)
    [hook] = _hooks(owner)  # the old destination is gone from amoCRM, the new one is there
    assert hook["destination"].endswith(new)
    assert _cfg(owner.id).webhook_subscribed
    body = owner.body({"leads": {"add": [{"id": "1"}]}})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    owner.app.config["WEBHOOK_TOKEN_CACHE_SECONDS"] = 0  # no cached owner of the old token
    assert (
        owner.client.post(f"/webhooks/amocrm/{old}", data=body, headers=headers).status_code == 404
    )
    assert (
        owner.client.post(f"/webhooks/amocrm/{new}", data=body, headers=headers).status_code == 200
    )


def test_failed_deliveries_go_back_in_the_queue_from_the_card(
    owner: Owner, make_user, login
) -> None:
    from crm_app.models import InboxStatus, WebhookDelivery

    assert owner.post(owner.body({"leads": {"add": [{"id": "1"}]}})).status_code == 200
    db.session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.owner_id == owner.id)
        .values(status=InboxStatus.FAILED, error="amoCRM: 500", attempts=12)
    )
    db.session.commit()
    make_user("boss", role="admin", owner="acme")
    login("boss")
    resp = _press(owner, "webhooks-retry-failed", "/admin/crm/ui/webhooks/retry-failed")
    assert resp.status_code == 200
    assert "Снова в очереди: 1." in resp.get_data(as_text=True)
    db.session.expire_all()
    row = db.session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.owner_id == owner.id)
    ).one()
    assert (row.status, row.attempts) == (InboxStatus.PENDING, 0)
