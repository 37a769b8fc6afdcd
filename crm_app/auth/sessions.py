"""Flask-Login glue and user lookup."""

from __future__ import annotations

from crm_app.extensions import db
from crm_app.models import User


def load_user(user_id: str) -> User | None:
    if not user_id.isdigit():
        return None
    return db.session.get(User, int(user_id))
