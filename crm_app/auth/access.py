"""Who is calling (session or Bearer JWT) and which owner they may act on."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import abort, request
from flask_login import current_user
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from crm_app.auth.tokens import user_from_token
from crm_app.models import User

F = TypeVar("F", bound=Callable[..., Any])
_MAX_OWNER_ID = 2**31 - 1
_ACTOR_KEY = "crm.actor"
_BEARER_KEY = "crm.via_bearer"
_MISSING = object()


def current_actor() -> User | None:
    """The signed-in user: a valid Bearer JWT wins, then the browser session."""
    # Cached on the request, not on `g`: an app context (and its `g`) can outlive a request.
    cached = request.environ.get(_ACTOR_KEY, _MISSING)
    if cached is not _MISSING:
        return cached
    actor: User | None = None
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        # A Bearer header is final: a bad token is 401 even if a session cookie came along.
        actor = user_from_token(credentials.strip())
        request.environ[_BEARER_KEY] = True
    elif current_user.is_authenticated:
        actor = current_user._get_current_object()
        # A session outlives a deactivation; the account's state is checked on every request.
        if not actor.is_active:
            actor = None
    request.environ[_ACTOR_KEY] = actor
    return actor


def via_bearer() -> bool:
    """True when this request authenticated (or tried to) with a Bearer token, not a cookie."""
    current_actor()
    return bool(request.environ.get(_BEARER_KEY))


def authenticate() -> User:
    """The actor, or a 401 problem (with `WWW-Authenticate: Bearer`) when there is none."""
    actor = current_actor()
    if actor is None:
        raise Unauthorized(
            description="Authentication required: send a valid Bearer token or sign in.",
            www_authenticate=WWWAuthenticate("bearer", {"realm": "crm-api"}),
        )
    return actor


def api_auth_required(view: F) -> F:
    """JSON endpoints: 401 problem document when nobody is signed in."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        authenticate()
        return view(*args, **kwargs)

    return cast(F, wrapper)


def resolve_owner_id(actor: User, requested: Any = None) -> int:
    """The owner this request acts on.

    Admins may name any owner (`?owner_id=`); everyone else only their own. Another owner's
    resources answer 404 rather than 403, so ids cannot be probed.
    """
    if requested in (None, ""):
        return actor.owner_id
    text = str(requested).strip()
    if not text.isascii() or not text.isdigit():
        abort(400, description="owner_id must be a positive integer.")
    owner_id = int(text)
    # Beyond the id column's range there is no owner (and the database would raise).
    if owner_id > _MAX_OWNER_ID:
        abort(404, description="Not found.")
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


def page_login_required(view: F) -> F:
    """Flask-Login's gate for pages and their partials.

    An HTMX request (a slot loading, a poll) gets 401 with `HX-Redirect` to the login page
    instead of a login form swapped into the middle of the page.
    """
    from flask import make_response, url_for

    from crm_app.extensions import htmx, login_manager

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            if htmx:
                resp = make_response("", 401)
                resp.headers["HX-Redirect"] = url_for("auth.login", next=url_for("pages.crm_page"))
                return resp
            return login_manager.unauthorized()
        return view(*args, **kwargs)

    return cast(F, wrapper)
