"""Short-lived JWTs for the JSON API: one pinned algorithm, exp/iat/iss/aud checked."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
from flask import current_app

from crm_app.extensions import db
from crm_app.models import User

ALGORITHM = "HS256"
# Tolerated clock difference, and the slack over the configured lifetime, in seconds.
LEEWAY = 5


def _signing_key() -> bytes:
    """A key of its own for JWTs, derived from SECRET_KEY, so no other use of SECRET_KEY
    (session cookies, CSRF tokens) can ever produce or accept an API token."""
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"crm-app/jwt/HS256/v1", hashlib.sha256).digest()


def issue_token(user: User) -> tuple[str, int]:
    """Return (token, expires_in) for the user."""
    ttl = int(current_app.config["JWT_TTL_SECONDS"])
    now = int(time.time())
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "owner_id": user.owner_id,
        # Ends with the user's sessions: a password change or "sign out everywhere" bumps it.
        "ver": user.auth_version or 0,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "iss": current_app.config["JWT_ISSUER"],
        "aud": current_app.config["JWT_AUDIENCE"],
    }
    headers = {"typ": "JWT"}
    return jwt.encode(claims, _signing_key(), algorithm=ALGORITHM, headers=headers), ttl


def user_from_token(token: str) -> User | None:
    """Verify a bearer token; any problem (alg, signature, claims, expiry) → None."""
    if not token or len(token) > 4096:
        return None
    try:
        claims = jwt.decode(
            token,
            _signing_key(),
            algorithms=[ALGORITHM],
            audience=current_app.config["JWT_AUDIENCE"],
            issuer=current_app.config["JWT_ISSUER"],
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "ver"], "strict_aud": True},
        )
    except jwt.PyJWTError:
        return None
    # Even a correctly signed token may not live longer than we would have issued it for.
    ttl = int(current_app.config["JWT_TTL_SECONDS"])
    if int(claims["exp"]) - int(claims["iat"]) > ttl + LEEWAY:
        return None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        return None
    user = db.session.get(User, int(sub))
    if user is None or not user.is_active:
        return None
    if claims.get("ver") != (user.auth_version or 0):
        return None
    return user
