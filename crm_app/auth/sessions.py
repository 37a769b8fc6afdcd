"""Browser sessions that the server can end: Flask-Login glue plus a row per signed-in browser.

The session cookie is signed but lives in the browser, so on its own it cannot be revoked: a
copy keeps working after logout. Each sign-in therefore stores a random id in the cookie and
its SHA-256 in `user_sessions`; a cookie whose row is gone is anonymous.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from flask import current_app, session
from flask_login import login_user, logout_user
from sqlalchemy import delete, select, update

from crm_app.extensions import db
from crm_app.models import User, UserSession
from crm_app.models.base import utcnow

SESSION_KEY = "crm_sid"
# last_seen_at is written at most this often, so a page's polling does not write on every request.
_TOUCH_EVERY = timedelta(minutes=5)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _idle_limit() -> timedelta:
    return timedelta(seconds=int(current_app.config["SESSION_IDLE_SECONDS"]))


def _clear_session() -> None:
    """Empty the cookie session but keep the chosen language."""
    lang = session.get("lang")
    session.clear()
    if lang in ("ru", "en"):
        session["lang"] = lang


def start_session(user: User) -> None:
    """Sign the browser in: a new server-side session row and Flask-Login's cookie."""
    now = utcnow()
    # Rows of browsers that went away are dropped here rather than by a scheduled job.
    db.session.execute(delete(UserSession).where(UserSession.last_seen_at < now - _idle_limit()))
    token = secrets.token_urlsafe(32)
    db.session.add(UserSession(user_id=user.id, token_hash=_hash(token), last_seen_at=now))
    db.session.commit()
    _clear_session()  # nothing from before the sign-in (a planted value) survives it
    session[SESSION_KEY] = token
    login_user(user)


def end_session() -> None:
    """Sign this browser out and delete its row, so a copy of the cookie stops working too."""
    token = session.get(SESSION_KEY)
    if isinstance(token, str):
        db.session.execute(delete(UserSession).where(UserSession.token_hash == _hash(token)))
        db.session.commit()
    logout_user()
    _clear_session()


def end_all_sessions(user: User) -> int:
    """End every browser session and API token of the user; returns how many sessions ended.

    The caller commits (it usually changes the user in the same transaction).
    """
    result = db.session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    user.auth_version = (user.auth_version or 0) + 1
    return int(getattr(result, "rowcount", 0) or 0)


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: the user only while this cookie's session row exists."""
    if not user_id.isdigit() or len(user_id) > 18:
        return None
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        return None
    row = db.session.scalar(
        select(UserSession).where(
            UserSession.token_hash == _hash(token), UserSession.user_id == int(user_id)
        )
    )
    if row is None:
        return None
    now = utcnow()
    if row.last_seen_at < now - _idle_limit():
        return None
    if row.last_seen_at < now - _TOUCH_EVERY:
        # Its own short transaction: the user is loaded lazily, maybe in the middle of a view
        # whose pending changes must not be committed here.
        with db.engine.begin() as conn:
            conn.execute(
                update(UserSession).where(UserSession.id == row.id).values(last_seen_at=now)
            )
    return db.session.get(User, int(user_id))
