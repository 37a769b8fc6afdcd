"""The webhook endpoint: who may post, what is stored, and that bad input is 4xx with no write."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from crm_app.models import InboxStatus, WebhookDelivery, WebhookEventKey
from tests.webhooks.conftest import (
    SAMPLES,
    Owner,
    count,
    form,
    inbox_rows,
    sample_bytes,
    with_account,
)

URLENCODED = sorted(p.name for p in SAMPLES.glob("webhook_*.urlencoded.txt"))


@pytest.fixture(autouse=True, params=["fast-path", "flask-view"])
def ingest_route(request, app):
    """Every test runs through the WSGI fast path and through the plain Flask view."""
    app.config["WEBHOOK_FAST_PATH"] = request.param == "fast-path"
    return request.param


def _nothing_written() -> None:
    assert count(WebhookDelivery) == 0
    assert count(WebhookEventKey) == 0


@pytest.mark.parametrize("name", URLENCODED)
def test_each_sample_body_is_stored_raw_and_acknowledged(owner: Owner, name: str) -> None:
    raw = sample_bytes(name)
    if b"account%5Bid%5D" not in raw:
        raw = with_account(raw, owner.account_id, owner.subdomain)
    else:
        # The unsorted sample carries the docs' account; swap in the connected one.
        raw = raw.replace(
            b"account%5Bid%5D=1312313", f"account%5Bid%5D={owner.account_id}".encode()
        )
        raw = raw.replace(
            b"account%5Bsubdomain%5D=test", f"account%5Bsubdomain%5D={owner.subdomain}".encode()
        )
    resp = owner.post(raw, headers={"X-Amocrm-Requestid": "req-1"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    [row] = inbox_rows(owner.id)
    assert bytes(row.body) == raw
    assert row.status == InboxStatus.PENDING
    assert row.request_id == "req-1"


def test_query_token_form_of_the_url(owner: Owner) -> None:
    body = owner.body({"leads": {"add": [{"id": "1"}]}})
    resp = owner.client.post(
        f"/webhooks/amocrm?token={owner.token}",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200
    assert len(inbox_rows(owner.id)) == 1


def test_redelivery_of_the_same_bytes_is_stored_once(owner: Owner) -> None:
    body = owner.body({"leads": {"update": [{"id": "5", "last_modified": "100"}]}})
    for _ in range(3):
        assert owner.post(body).status_code == 200
    assert len(inbox_rows(owner.id)) == 1


def test_missing_content_type_is_accepted(owner: Owner) -> None:
    body = owner.body({"leads": {"add": [{"id": "1"}]}})
    resp = owner.client.post(owner.path, data=body, content_type="")
    assert resp.status_code == 200


# -- refusals -------------------------------------------------------------------------------------


def test_unknown_or_missing_token_is_404(owner: Owner) -> None:
    body = owner.body({"leads": {"add": [{"id": "1"}]}})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    for path in (
        "/webhooks/amocrm/not-the-token",
        "/webhooks/amocrm/" + owner.token[:-1],
        "/webhooks/amocrm",
        "/webhooks/amocrm?token=",
        "/webhooks/amocrm?token=wrong",
        "/webhooks/amocrm/" + "x" * 500,
    ):
        resp = owner.client.post(path, data=body, headers=headers)
        assert resp.status_code == 404, path
        assert resp.mimetype == "application/problem+json"
        assert owner.token not in resp.get_data(as_text=True)
    _nothing_written()


def test_get_is_not_allowed(owner: Owner) -> None:
    assert owner.client.get(owner.path).status_code == 405
    _nothing_written()


@pytest.mark.parametrize(
    ("account", "status"),
    [
        ({"id": "1", "subdomain": "demo"}, 403),
        ({"id": "ACCOUNT", "subdomain": "other"}, 403),
        ({"subdomain": "other"}, 403),
        ({"id": "999"}, 403),
        ({}, 400),
    ],
    ids=["wrong-id", "wrong-subdomain", "only-wrong-subdomain", "only-wrong-id", "no-account"],
)
def test_wrong_or_missing_account_is_refused(owner: Owner, account: dict, status: int) -> None:
    account = {k: (str(owner.account_id) if v == "ACCOUNT" else v) for k, v in account.items()}
    payload = {"leads": {"add": [{"id": "1"}]}}
    body = form({"account": account, **payload} if account else payload)
    resp = owner.post(body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    _nothing_written()


def test_subdomain_alone_or_id_alone_is_enough_when_it_matches(owner: Owner) -> None:
    for account in ({"id": str(owner.account_id)}, {"subdomain": owner.subdomain.upper()}):
        body = form({"account": account, "leads": {"add": [{"id": str(len(account))}]}})
        assert owner.post(body).status_code == 200
    assert len(inbox_rows(owner.id)) == 2


def test_disconnected_owner_refuses_deliveries(owner: Owner) -> None:
    from crm_app.extensions import db
    from crm_app.models import AmoConfig

    cfg = db.session.query(AmoConfig).filter_by(owner_id=owner.id).one()
    cfg.status = "disconnected"
    db.session.commit()
    assert owner.post(owner.body({"leads": {"add": [{"id": "1"}]}})).status_code == 409
    _nothing_written()


def test_another_owners_token_cannot_post_for_this_account(owner: Owner, make_user, app) -> None:
    from crm_app.extensions import db
    from crm_app.models import AmoConfig
    from crm_app.services.webhooks import ensure_webhook_token

    other = make_user("bob", role="admin", owner="other-co")
    db.session.add(
        AmoConfig(
            owner_id=other.owner_id, subdomain="elsewhere", account_id=777, status="connected"
        )
    )
    db.session.commit()
    token = ensure_webhook_token(other.owner_id)
    resp = owner.client.post(
        f"/webhooks/amocrm/{token}",
        data=owner.body({"leads": {"add": [{"id": "1"}]}}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 403
    _nothing_written()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", None, 400),
        (b"\xff\xfe\xfd", None, 400),
        (b"account%5Bid%5D=ACC&leads%5Badd%5D=%FF", None, 400),
        (b'{"leads": {"add": [{"id": 1}]}}', None, 400),
        (b'{"leads": {"add": [{"id": 1}]}}', "application/json", 415),
        (
            b"account%5Bid%5D=ACC&leads%5Badd%5D%5B0%5D%5Bid%5D=1",
            "multipart/form-data; boundary=x",
            415,
        ),
        (b"account%5Bid%5D=ACC&garbage", None, 400),
        (b"account%5Bid%5D=ACC", None, 400),
        (b"account%5Bid%5D=ACC&a" + b"%5Bx%5D" * 20 + b"=1", None, 400),
    ],
    ids=[
        "empty",
        "binary",
        "bad-percent-utf8",
        "json-as-form",
        "json",
        "multipart",
        "pair-without-equals",
        "account-only",
        "too-deep",
    ],
)
def test_malformed_bodies_are_4xx(
    owner: Owner, body: bytes, content_type: str | None, status: int
) -> None:
    body = body.replace(b"ACC", str(owner.account_id).encode())
    headers = {"Content-Type": content_type or "application/x-www-form-urlencoded"}
    resp = owner.client.post(owner.path, data=body, headers=headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    _nothing_written()


def test_compressed_body_is_refused(owner: Owner) -> None:
    import gzip

    body = gzip.compress(owner.body({"leads": {"add": [{"id": "1"}]}}))
    resp = owner.post(body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 415
    _nothing_written()


def test_oversized_body_is_413(owner: Owner, app) -> None:
    app.config["WEBHOOK_MAX_BODY"] = 4096
    filler = "x" * 5000
    body = owner.body({"leads": {"add": [{"id": "1", "name": filler}]}})
    resp = owner.post(body)
    assert resp.status_code == 413
    _nothing_written()
    # Just under the limit is fine.
    small = owner.body({"leads": {"add": [{"id": "1", "name": "x" * 3000}]}})
    assert len(small) <= 4096
    assert owner.post(small).status_code == 200


def test_too_many_fields_is_400(owner: Owner, app) -> None:
    app.config["WEBHOOK_MAX_BODY"] = 1024 * 1024
    body = owner.body({"leads": {"add": [{"id": "1"}]}}) + b"".join(
        b"&f%d=1" % i for i in range(20_001)
    )
    assert owner.post(body).status_code == 400
    _nothing_written()


def test_random_bytes_never_cause_a_500(owner: Owner) -> None:
    rng = random.Random(5)
    prefix = owner.body({"leads": {"add": [{"id": "1"}]}})
    alphabet = b"%[]=&+abc019\xd0\x9f\xff "
    for _ in range(300):
        tail = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        body = prefix + b"&" + tail if rng.random() < 0.5 else tail
        resp = owner.post(body)
        assert resp.status_code < 500, (body, resp.status_code)
        assert resp.status_code in (200, 400, 403), (body, resp.status_code)


def test_acknowledgement_does_not_wait_for_processing(owner: Owner) -> None:
    """The request stores and answers; nothing is applied until the worker runs."""
    lead_id = owner.ids("leads")[0]
    resp = owner.post(owner.body({"leads": {"update": [{"id": str(lead_id)}]}}))
    assert resp.status_code == 200
    assert resp.get_data() == b"OK"
    [row] = inbox_rows(owner.id)
    assert row.status == InboxStatus.PENDING
    assert owner.server.requests_log(path_prefix="/api/v4/leads") == []


# -- storage and broker trouble -------------------------------------------------------------------


def test_broker_down_still_stores_and_answers(base_config, tmp_path, _schema) -> None:
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.models import AmoConfig, Owner
    from crm_app.services.webhooks import enqueue, ensure_webhook_token
    from tests.conftest import _truncate_all
    from tests.webhooks.conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app({**base_config, "REDIS_URL": dead, "RATELIMIT_STORAGE_URI": "memory://"})
    with app.app_context():
        _truncate_all()
        owner = Owner(name="nobroker")
        db.session.add(owner)
        db.session.flush()
        db.session.add(
            AmoConfig(owner_id=owner.id, subdomain="demo", account_id=5, status="connected")
        )
        db.session.commit()
        token = ensure_webhook_token(owner.id)
        assert enqueue.kick_now(owner.id) is False  # fails quietly, never raises
        resp = app.test_client().post(
            f"/webhooks/amocrm/{token}",
            data=form({"account": {"id": "5"}, "leads": {"add": [{"id": "1"}]}}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 200
        assert [r.status for r in inbox_rows(owner.id)] == [InboxStatus.PENDING]
        kicker = app.extensions["crm_webhook_kicker"]
        from tests.webhooks.conftest import wait_until

        assert wait_until(lambda: owner.id in kicker.retry, timeout=10)
        _truncate_all()
        db.session.remove()


def test_embedded_sqlite_default_stores_deliveries(base_config, tmp_path) -> None:
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.models import AmoConfig, Owner
    from crm_app.services.webhooks import ensure_webhook_token

    app = create_app(
        {
            **base_config,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
            "REDIS_URL": "",
            "RATELIMIT_STORAGE_URI": "memory://",
            "INSTANCE_PATH": str(tmp_path),
            "CELERY_EAGER": False,
        }
    )
    with app.app_context():
        db.create_all()
        owner = Owner(name="embedded")
        db.session.add(owner)
        db.session.flush()
        db.session.add(
            AmoConfig(owner_id=owner.id, subdomain="demo", account_id=5, status="connected")
        )
        db.session.commit()
        token = ensure_webhook_token(owner.id)
        client = app.test_client()
        body = form({"account": {"id": "5", "subdomain": "demo"}, "leads": {"add": [{"id": "1"}]}})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        for _ in range(2):
            assert (
                client.post(f"/webhooks/amocrm/{token}", data=body, headers=headers).status_code
                == 200
            )
        assert client.post("/webhooks/amocrm/nope", data=body, headers=headers).status_code == 404
        rows = db.session.scalars(select(WebhookDelivery)).all()
        assert len(rows) == 1 and bytes(rows[0].body) == body
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("sync_commit", [False, True])
def test_commit_mode_of_the_fast_path_connections(owner: Owner, app, sync_commit: bool) -> None:
    from crm_app.extensions import db
    from crm_app.services.webhooks import fastpath

    app.config["WEBHOOK_SYNC_COMMIT"] = sync_commit
    assert owner.post(owner.body({"leads": {"add": [{"id": "7"}]}})).status_code == 200
    stack = fastpath.stack_for(db.engine, sync_commit)
    assert stack is not None
    setting = stack.run(lambda conn: conn.execute("SHOW synchronous_commit").fetchone()[0])
    assert setting == ("on" if sync_commit else "off")
    assert len(inbox_rows(owner.id)) == 1
