"""Who is calling (session or Bearer JWT) and which owner they may act on."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, request
from flask_login import current_user

from crm_app.auth.tokens import user_from_token
from crm_app.models import User

F = TypeVar("F", bound=Callable[..., Any])


def current_actor() -> User | None:
    """The signed-in user: a valid Bearer JWT wins, then the browser session."""
    if "actor" in g:
        return g.actor
    actor: User | None = None
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        actor = user_from_token(header[7:].strip())
        g.via_bearer = True
    elif current_user.is_authenticated:
        actor = current_user._get_current_object()
    g.actor = actor
    return actor


def api_auth_required(view: F) -> F:
    """JSON endpoints: 401 problem document when nobody is signed in."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_actor() is None:
            abort(401, description="Authentication required: send a Bearer token or sign in.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def resolve_owner_id(actor: User, requested: Any = None) -> int:
    """The owner this request acts on.

    Admins may name any owner (`?owner_id=`); everyone else only their own. Another owner's
    resources answer 404 rather than 403, so ids cannot be probed.
    """
    if requested in (None, ""):
        return actor.owner_id
    try:
        owner_id = int(requested)
    except (TypeError, ValueError):
        abort(400, description="owner_id must be an integer.")
    if owner_id != actor.owner_id and not actor.is_admin:
        abort(404, description="Not found.")
    if actor.is_admin:
        from crm_app.extensions import db
        from crm_app.models import Owner

        if db.session.get(Owner, owner_id) is None:
            abort(404, description="Not found.")
    return owner_id


def require_write(actor: User) -> None:
    """Guests read; only Admin and User change anything."""
    if not actor.can_write:
        abort(403, description="Read-only access: guests cannot change the integration.")
