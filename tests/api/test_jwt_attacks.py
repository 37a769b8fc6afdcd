"""Forged, tampered, stale and misaddressed JWTs all answer 401 problem documents."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.api.conftest import World

URL = "/admin/crm/status"


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(app: Any, user_id: int, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "ver": 0,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "iss": app.config["JWT_ISSUER"],
        "aud": app.config["JWT_AUDIENCE"],
    }
    for key, value in changes.items():
        if value is _DROP:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


_DROP = object()


def _key() -> bytes:
    from crm_app.auth.tokens import _signing_key

    return _signing_key()


def _good(app: Any, uid: int, **changes: Any) -> str:
    return jwt.encode(_claims(app, uid, **changes), _key(), algorithm="HS256")


def _rsa_pair() -> tuple[Any, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem


def _alg_none(app: Any, uid: int) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(app, uid))}."


def _alg_none_upper(app: Any, uid: int) -> str:
    return f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{_b64(_claims(app, uid))}."


def _tampered_payload(app: Any, uid: int) -> str:
    # A genuine token whose payload is swapped for another user's (an admin's) claims.
    head, _, sig = _good(app, uid).split(".")
    return f"{head}.{_b64(_claims(app, uid, sub='1', role='admin'))}.{sig}"


def _bad_signature(app: Any, uid: int) -> str:
    head, payload, sig = _good(app, uid).split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    return f"{head}.{payload}.{flipped}"


def _rs256_own_key(app: Any, uid: int) -> str:
    private, _ = _rsa_pair()
    return jwt.encode(_claims(app, uid), private, algorithm="RS256")


def _hs256_with_public_key(app: Any, uid: int) -> str:
    # The classic confusion: an HMAC token "signed" with a public key the attacker knows.
    _, public_pem = _rsa_pair()
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64(_claims(app, uid))
    import hashlib
    import hmac

    sig = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def _hs512_right_key(app: Any, uid: int) -> str:
    return jwt.encode(_claims(app, uid), _key(), algorithm="HS512")


def _session_secret_key(app: Any, uid: int) -> str:
    # SECRET_KEY signs cookies; API tokens use a key derived from it, never the key itself.
    return jwt.encode(_claims(app, uid), app.config["SECRET_KEY"], algorithm="HS256")


ATTACKS: dict[str, Callable[[Any, int], str]] = {
    "alg none": _alg_none,
    "alg NONE": _alg_none_upper,
    "tampered payload": _tampered_payload,
    "bad signature": _bad_signature,
    "RS256 with the attacker's key": _rs256_own_key,
    "HS256 keyed with an RSA public key": _hs256_with_public_key,
    "HS512 (algorithm not pinned)": _hs512_right_key,
    "signed with SECRET_KEY itself": _session_secret_key,
    "expired": lambda app, uid: _good(
        app, uid, exp=int(time.time()) - 60, iat=int(time.time()) - 400
    ),
    "missing exp": lambda app, uid: _good(app, uid, exp=_DROP),
    "missing iat": lambda app, uid: _good(app, uid, iat=_DROP),
    "missing iss": lambda app, uid: _good(app, uid, iss=_DROP),
    "missing aud": lambda app, uid: _good(app, uid, aud=_DROP),
    "missing sub": lambda app, uid: _good(app, uid, sub=_DROP),
    "wrong aud": lambda app, uid: _good(app, uid, aud="someone-else"),
    "aud list smuggling ours": lambda app, uid: _good(
        app, uid, aud=["someone-else", app.config["JWT_AUDIENCE"]]
    ),
    "wrong iss": lambda app, uid: _good(app, uid, iss="evil-issuer"),
    "future nbf": lambda app, uid: _good(app, uid, nbf=int(time.time()) + 3600),
    "future iat": lambda app, uid: _good(
        app, uid, iat=int(time.time()) + 3600, exp=int(time.time()) + 3700
    ),
    "lifetime longer than issued": lambda app, uid: _good(
        app, uid, exp=int(time.time()) + 30 * 86400
    ),
    "non-numeric sub": lambda app, uid: _good(app, uid, sub="admin"),
    "integer sub": lambda app, uid: _good(app, uid, sub=uid),
    "sub of a user that never existed": lambda app, uid: _good(app, uid, sub="987654"),
    "no session version": lambda app, uid: _good(app, uid, ver=_DROP),
    "a signed-out session version": lambda app, uid: _good(app, uid, ver=-1),
    "session version as a string": lambda app, uid: _good(app, uid, ver="0"),
    "garbage": lambda app, uid: "not-a-jwt",
    "three garbage parts": lambda app, uid: "a.b.c",
    "empty": lambda app, uid: "",
    "oversized": lambda app, uid: "e" * 10_000,
}


def _assert_401(resp: Any) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "application/problem+json"
    assert resp.json["status"] == 401
    assert resp.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_a_valid_token_is_accepted(app, client, world: World) -> None:
    """The control row: the forging helpers build tokens the server does accept when honest."""
    token = _good(app, world.users["user"].id)
    assert client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # The scheme name is case-insensitive (RFC 9110).
    assert client.get(URL, headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_attack_table(app, client, world: World) -> None:
    """Each forged or misaddressed token gets 401; every row that does not is reported."""
    accepted = {}
    for name, forge in sorted(ATTACKS.items()):
        token = forge(app, world.users["user"].id)
        resp = client.get(URL, headers={"Authorization": f"Bearer {token}"})
        try:
            _assert_401(resp)
        except AssertionError:
            accepted[name] = resp.status_code
    assert not accepted, accepted


def test_token_of_a_deleted_user(app, client, world: World) -> None:
    from crm_app.extensions import db

    user = world.users["user"]
    token = world.tokens["user"]
    assert client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    db.session.delete(user)
    db.session.commit()
    _assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_token_of_a_deactivated_user(app, client, world: World) -> None:
    from crm_app.extensions import db

    user = world.users["admin"]
    token = world.tokens["admin"]
    assert client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    user.is_active_flag = False
    db.session.commit()
    _assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_role_comes_from_the_database_not_the_token(app, client, world: World) -> None:
    """A token minted for an admin loses admin powers the moment the role is lowered."""
    from crm_app.extensions import db

    user = world.users["admin"]
    token = world.tokens["admin"]
    headers = {"Authorization": f"Bearer {token}"}
    other = {"owner_id": world.other}
    assert client.get("/admin/crm/contacts", headers=headers, query_string=other).status_code == 200
    user.role = "guest"
    db.session.commit()
    assert client.get("/admin/crm/contacts", headers=headers, query_string=other).status_code == 404
    assert client.post("/admin/crm/sync", headers=headers, json={}).status_code == 403


def test_bad_bearer_does_not_fall_back_to_the_session(app, client, login, world: World) -> None:
    login("acme_user")
    assert client.get(URL).status_code == 200  # the session works on its own
    _assert_401(client.get(URL, headers={"Authorization": "Bearer forged.token.here"}))


def test_session_of_a_deactivated_user(app, client, login, world: World) -> None:
    from crm_app.extensions import db

    login("acme_user")
    assert client.get(URL).status_code == 200
    world.users["user"].is_active_flag = False
    db.session.commit()
    assert client.get(URL).status_code == 401


def test_token_endpoint_issues_what_the_api_accepts(app, client, world: World) -> None:
    resp = client.post("/auth/token", json={"username": "acme_guest", "password": "password123"})
    assert resp.status_code == 200
    body = resp.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == app.config["JWT_TTL_SECONDS"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"exp", "iat", "iss", "aud", "sub"} <= set(claims)
    assert claims["exp"] - claims["iat"] == app.config["JWT_TTL_SECONDS"]
    ok = client.get(URL, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert ok.status_code == 200
