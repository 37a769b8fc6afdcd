"""The admin card (/admin/crm/ui/inbound) and `flask api-keys`."""

from __future__ import annotations

import re

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import ApiKey, InboundRequest
from crm_app.services.inbound import submit

HX = {"HX-Request": "true"}


def _hx(csrf: str) -> dict[str, str]:
    return {**HX, "X-CSRFToken": csrf}


def test_card_lists_keys_and_requests_and_creates_a_key_once(client, login, csrf_token, make_user):
    user = make_user("writer", role="user", owner="shop")
    login("writer")
    empty = client.get("/admin/crm/ui/inbound", headers=HX)
    assert empty.status_code == 200
    html = empty.get_data(as_text=True)
    assert 'id="inbound-card"' in html and "<html" not in html
    assert "inbound-no-keys" in html and "inbound-no-requests" in html
    assert "<script" not in html and " style=" not in html

    created = client.post(
        "/admin/crm/ui/inbound/keys", data={"name": "виджет"}, headers=_hx(csrf_token())
    )
    assert created.status_code == 200
    assert created.headers["Cache-Control"] == "no-store"
    page = created.get_data(as_text=True)
    plain = re.search(r'id="new-api-key">([^<]+)<', page).group(1)
    row = db.session.scalar(select(ApiKey))
    assert row.owner_id == user.owner_id and row.name == "виджет"
    assert plain.startswith(row.prefix)
    again = client.get("/admin/crm/ui/inbound", headers=HX).get_data(as_text=True)
    assert plain not in again and row.prefix in again  # shown once, listed by prefix

    submit(user.owner_id, {"channel": "widget", "external_id": "x"}, enqueue_now=False)
    req = db.session.scalar(select(InboundRequest))
    req.status, req.outcome, req.error = "failed", "rejected", "amoCRM refused the pipeline"
    db.session.commit()
    listed = client.get("/admin/crm/ui/inbound", headers=HX).get_data(as_text=True)
    assert f"inbound-request-{req.public_id}" in listed
    assert "amoCRM refused the pipeline" in listed and "Повторить" in listed

    retried = client.post(
        f"/admin/crm/ui/inbound/requests/{req.public_id}/retry", headers=_hx(csrf_token())
    )
    assert retried.status_code == 200
    db.session.expire_all()
    assert db.session.get(InboundRequest, req.id).status == "queued"

    revoked = client.post(f"/admin/crm/ui/inbound/keys/{row.id}/revoke", headers=_hx(csrf_token()))
    assert revoked.status_code == 200
    db.session.expire_all()
    assert db.session.get(ApiKey, row.id).revoked_at is not None


def test_card_needs_login_and_guests_only_read(client, login, csrf_token, make_user):
    anonymous = client.get("/admin/crm/ui/inbound", headers=HX)
    assert anonymous.status_code == 401 and anonymous.headers["HX-Redirect"].startswith("/login")
    assert client.get("/admin/crm/ui/inbound").status_code == 302
    make_user("viewer", role="guest", owner="shop")
    login("viewer")
    view = client.get("/admin/crm/ui/inbound", headers=HX)
    assert view.status_code == 200
    assert "inbound-key-form" not in view.get_data(as_text=True)
    assert client.post("/admin/crm/ui/inbound/keys", headers=_hx(csrf_token())).status_code == 403
    assert db.session.scalar(select(ApiKey)) is None


def test_writes_need_the_csrf_token(client, login, make_user):
    make_user("writer2", role="user", owner="shop")
    login("writer2")
    assert client.post("/admin/crm/ui/inbound/keys", headers=HX).status_code == 400
    assert db.session.scalar(select(ApiKey)) is None


def test_other_owners_stay_hidden(client, login, csrf_token, make_user):
    from crm_app.services.inbound import create_api_key

    other = make_user("other", role="user", owner="other-shop")
    _, key = create_api_key(other.owner_id, "theirs")
    make_user("me", role="user", owner="my-shop")
    login("me")
    assert (
        client.get(f"/admin/crm/ui/inbound?owner_id={other.owner_id}", headers=HX).status_code
        == 404
    )
    resp = client.post(f"/admin/crm/ui/inbound/keys/{key.id}/revoke", headers=_hx(csrf_token()))
    assert resp.status_code == 404
    db.session.expire_all()
    assert db.session.get(ApiKey, key.id).revoked_at is None


def test_admin_sees_any_owner_and_forms_keep_the_owner(client, login, make_user):
    other = make_user("other", role="user", owner="other-shop")
    make_user("boss", role="admin", owner="hq")
    login("boss")
    card = client.get(f"/admin/crm/ui/inbound?owner_id={other.owner_id}", headers=HX)
    assert card.status_code == 200
    assert f"owner_id={other.owner_id}" in card.get_data(as_text=True)


def test_without_htmx_the_card_is_a_page(client, login, csrf_token, make_user):
    make_user("plain", role="user", owner="shop")
    login("plain")
    resp = client.post("/admin/crm/ui/inbound/keys", data={"name": "k", "csrf_token": csrf_token()})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "<html" in html and 'id="new-api-key"' in html


def test_api_keys_cli(runner, make_user):
    make_user("cli-admin", role="admin", owner="acme")
    created = runner.invoke(args=["api-keys", "create", "--owner", "acme", "--name", "bot"])
    assert created.exit_code == 0, created.output
    plain = created.stdout.strip().splitlines()[0]
    row = db.session.scalar(select(ApiKey))
    assert plain.startswith(row.prefix) and row.name == "bot"
    listed = runner.invoke(args=["api-keys", "list", "--owner", "acme"])
    assert row.prefix in listed.output and plain not in listed.output and "active" in listed.output
    revoked = runner.invoke(args=["api-keys", "revoke", row.prefix])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    db.session.expire_all()
    assert db.session.get(ApiKey, row.id).revoked_at is not None
    assert runner.invoke(args=["api-keys", "revoke", "nope"]).exit_code != 0
    assert runner.invoke(args=["api-keys", "create", "--owner", "nobody"]).exit_code != 0
