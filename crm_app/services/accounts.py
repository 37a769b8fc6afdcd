"""User accounts: password changes, deactivation and "sign out everywhere"."""

from __future__ import annotations

from sqlalchemy import select

from crm_app.auth.password_policy import check_password
from crm_app.auth.passwords import hash_password
from crm_app.auth.sessions import end_all_sessions
from crm_app.extensions import db
from crm_app.models import User


class UnknownUser(LookupError):
    """No user has that name."""


def find_user(username: str) -> User:
    user: User | None = db.session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        raise UnknownUser(f"no user {username.strip()!r}")
    return user


def set_password(user: User, password: str) -> None:
    """Change the password (refusing weak ones) and end every session and API token."""
    check_password(password, user.username)
    user.password_hash = hash_password(password)
    end_all_sessions(user)
    db.session.commit()


def set_active(user: User, active: bool) -> None:
    """Deactivate (ending every session and API token) or reactivate a user."""
    user.is_active_flag = active
    if not active:
        end_all_sessions(user)
    db.session.commit()


def sign_out_everywhere(user: User) -> int:
    """End every browser session and API token of the user; returns the sessions ended."""
    ended = end_all_sessions(user)
    db.session.commit()
    return ended
