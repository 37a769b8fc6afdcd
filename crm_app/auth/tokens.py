"""Short-lived JWTs for the JSON API: one pinned algorithm, exp/iat/iss/aud checked."""

from __future__ import annotations

import time

import jwt
from flask import current_app

from crm_app.extensions import db
from crm_app.models import User

ALGORITHM = "HS256"


def issue_token(user: User) -> tuple[str, int]:
    """Return (token, expires_in) for the user."""
    ttl = int(current_app.config["JWT_TTL_SECONDS"])
    now = int(time.time())
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "owner_id": user.owner_id,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "iss": current_app.config["JWT_ISSUER"],
        "aud": current_app.config["JWT_AUDIENCE"],
    }
    return jwt.encode(claims, current_app.config["SECRET_KEY"], algorithm=ALGORITHM), ttl


def user_from_token(token: str) -> User | None:
    """Verify a bearer token; any problem (alg, signature, claims, expiry) → None."""
    try:
        claims = jwt.decode(
            token,
            current_app.config["SECRET_KEY"],
            algorithms=[ALGORITHM],
            audience=current_app.config["JWT_AUDIENCE"],
            issuer=current_app.config["JWT_ISSUER"],
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        return None
    user = db.session.get(User, int(sub))
    if user is None or not user.is_active:
        return None
    return user
