"""The request context: who is calling and which owner's integration they look at.

Every page, partial and API route gets it from `request_context()`; templates receive it as
`ctx` and build owner-scoped URLs with `ctx.url(...)` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request, url_for

from crm_app.auth.access import authenticate, require_write, resolve_owner_id
from crm_app.models import User

_CONTEXT_KEY = "crm.request_context"


@dataclass(frozen=True)
class RequestContext:
    """The actor (session or Bearer JWT), their role and the owner this request acts on."""

    actor: User
    owner_id: int

    @property
    def role(self) -> str:
        return str(self.actor.role)

    @property
    def can_write(self) -> bool:
        """Admin and User change things; a Guest only reads."""
        return bool(self.actor.can_write)

    @property
    def is_admin(self) -> bool:
        return bool(self.actor.is_admin)

    @property
    def foreign(self) -> bool:
        """An admin looking at another owner: every URL of the page must carry ?owner_id=."""
        return self.owner_id != self.actor.owner_id

    @property
    def scope(self) -> dict[str, int]:
        """The query arguments that keep a link on this owner (empty for one's own owner)."""
        return {"owner_id": self.owner_id} if self.foreign else {}

    def url(self, endpoint: str, **values: Any) -> str:
        """`url_for` that stays on the owner being looked at."""
        return url_for(endpoint, **{**self.scope, **values})

    def require_write(self) -> None:
        """403 for a Guest."""
        require_write(self.actor)


def request_context(write: bool = False) -> RequestContext:
    """The context of this request, built once: 401 without an actor, 404 for an owner the
    actor may not see (`?owner_id=` in the query string; forms post to `ctx.url(...)`, which
    carries it; a body is never read here), 403 if `write` and the actor is a Guest."""
    ctx: RequestContext | None = request.environ.get(_CONTEXT_KEY)
    if ctx is None:
        actor = authenticate()
        owner_id = resolve_owner_id(actor, request.args.get("owner_id"))
        ctx = RequestContext(actor, owner_id)
        request.environ[_CONTEXT_KEY] = ctx
    if write:
        ctx.require_write()
    return ctx
