"""POST/GET /api/crm/inbound: keys, validation, owners, idempotency (no worker needed)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import InboundRequest
from crm_app.services.inbound import create_api_key, revoke_api_key
from tests.inbound.conftest import post_inbound


@pytest.fixture
def owner(make_user) -> int:
    """Storing requests needs no amoCRM: an owner without a sandbox keeps these tests quick."""
    return make_user("acme-admin", role="admin", owner="acme").owner_id


BODY = {"channel": "widget", "external_id": "v-1", "name": "Тест", "message": "Привет"}


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(InboundRequest)) or 0


def test_accepts_and_reports_queued(client, owner, api_key):
    resp = post_inbound(client, api_key, BODY)
    assert resp.status_code == 202
    assert resp.json["status"] == "queued"
    assert resp.headers["Location"].endswith(f"/api/crm/inbound/{resp.json['id']}")
    got = client.get(resp.headers["Location"], headers={"Authorization": f"Bearer {api_key}"})
    assert got.status_code == 200
    assert got.json["status"] == "queued"
    assert {"id", "status", "contact_id", "lead_id", "outcome", "error"} <= set(got.json)
    stored = db.session.scalar(select(InboundRequest))
    assert stored.payload["message"] == "Привет" and stored.owner_id == owner


def test_invalid_bodies_get_400_with_field_errors(client, owner, api_key):
    resp = post_inbound(
        client,
        api_key,
        {"channel": "sms", "phone": "12", "email": "not-mail", "utm": {"bad key": "x"},
         "page_url": "javascript:alert(1)"},
    )  # fmt: skip
    assert resp.status_code == 400
    assert resp.mimetype == "application/problem+json"
    fields = {e["field"] for e in resp.json["errors"]}
    assert {"channel", "external_id", "phone", "email", "utm", "page_url"} <= fields
    assert "javascript" not in resp.get_data(as_text=True)  # inputs are not echoed
    tg = post_inbound(client, api_key, {"channel": "telegram", "external_id": "abc"})
    assert tg.status_code == 400
    assert [e["field"] for e in tg.json["errors"]] == ["external_id"]
    for raw in (b"not json", b"[1, 2]", b""):
        bad = client.post(
            "/api/crm/inbound",
            data=raw,
            content_type="application/json",
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert bad.status_code == 400
    long = post_inbound(client, api_key, {**BODY, "message": "x" * 10_001})
    assert long.status_code == 400 and long.json["errors"][0]["field"] == "message"
    assert _count() == 0


def test_missing_bad_and_revoked_keys_get_401(client, owner, api_key):
    assert client.post("/api/crm/inbound", json=BODY).status_code == 401
    wrong = post_inbound(client, api_key + "x", BODY)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    basic = client.post(
        "/api/crm/inbound", json=BODY, headers={"Authorization": f"Basic {api_key}"}
    )
    assert basic.status_code == 401
    plain, row = create_api_key(owner, "to revoke")
    assert post_inbound(client, plain, BODY).status_code == 202
    revoke_api_key(owner, row.id)
    assert post_inbound(client, plain, BODY).status_code == 401
    ok = post_inbound(client, api_key, BODY)
    assert (
        client.get(
            f"/api/crm/inbound/{ok.json['id']}", headers={"Authorization": f"Bearer {plain}"}
        ).status_code
        == 401
    )


def test_another_owners_request_is_not_found(client, owner, api_key, make_user):
    other = make_user("other-admin", role="admin", owner="other")
    other_key, _ = create_api_key(other.owner_id, "other")
    mine = post_inbound(client, api_key, BODY).json["id"]
    resp = client.get(f"/api/crm/inbound/{mine}", headers={"Authorization": f"Bearer {other_key}"})
    assert resp.status_code == 404
    for junk in ("123", "not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        assert (
            client.get(
                f"/api/crm/inbound/{junk}", headers={"Authorization": f"Bearer {api_key}"}
            ).status_code
            == 404
        )


def test_idempotency_key_header_answers_with_the_same_request(client, owner, api_key):
    a = post_inbound(client, api_key, BODY, **{"Idempotency-Key": "order-77"})
    b = post_inbound(client, api_key, BODY, **{"Idempotency-Key": "order-77"})
    assert a.status_code == b.status_code == 202
    assert a.json["id"] == b.json["id"]
    assert _count() == 1
    bad = post_inbound(client, api_key, BODY, **{"Idempotency-Key": "has space"})
    assert bad.status_code == 400


def test_key_is_stored_hashed(owner):
    from crm_app.models import ApiKey
    from crm_app.services.inbound import authenticate_api_key

    plain, row = create_api_key(owner, "hashed")
    stored = db.session.get(ApiKey, row.id)
    assert plain not in (stored.key_hash, stored.prefix, stored.name)
    assert plain.startswith(stored.prefix) and len(stored.prefix) < len(plain) // 3
    assert authenticate_api_key(plain).id == row.id
    assert authenticate_api_key(plain[:-1]) is None
    assert authenticate_api_key("") is None
