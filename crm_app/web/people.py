"""The bot's read API: a person from the mirror, and full-text search (API key, per-key limits)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from flask import Blueprint, abort, current_app, request
from spectree import Response as Responses

from crm_app.extensions import csrf, limiter
from crm_app.models import ApiKey
from crm_app.schemas.common import Problem
from crm_app.schemas.openapi import BOT_SECURITY, spec
from crm_app.schemas.people import PeopleQuery, PersonOut, SearchOut, SearchQuery
from crm_app.services import people, search
from crm_app.services.inbound import authenticate_api_key
from crm_app.web.errors import problem

bp = Blueprint("people", __name__)

_ERRORS = {f"HTTP_{code}": Problem for code in (400, 401, 404, 422, 429)}


def _owner() -> int:
    """The API key's owner: every answer is about that owner's data only."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    key: ApiKey | None = None
    if scheme.lower() == "bearer" and value.strip():
        key = authenticate_api_key(value.strip())
    if key is None:
        resp = problem(
            401, "Unauthorized", "Send a valid API key as 'Authorization: Bearer <key>'."
        )
        resp.headers["WWW-Authenticate"] = 'Bearer realm="crm"'
        abort(resp)
    return int(key.owner_id)


def _limit_key() -> str:
    header = request.headers.get("Authorization", "")
    digest = hashlib.sha256(header.encode("utf-8")).hexdigest()[:24]
    return f"crm-read:{digest}" if header else "crm-read-ip:" + (request.remote_addr or "?")


def _rate_limit() -> str:
    configured = current_app.config.get("CRM_READ_RATE_LIMIT") or os.environ.get(
        "CRM_READ_RATE_LIMIT"
    )
    return str(configured or "600 per minute")


@bp.get("/api/crm/people")
@csrf.exempt
@limiter.limit(_rate_limit, key_func=_limit_key)
@spec.validate(
    resp=Responses(HTTP_200=PersonOut, **_ERRORS),
    tags=["bot"],
    security=BOT_SECURITY,
    operation_id="crm_people",
)
def crm_people(query: PeopleQuery) -> Any:
    """A person from the mirror: contact, open and last closed deals, open tasks, last notes.

    Exactly one of `telegram_id`, `phone`, `email`, `external_id` (+ `channel`). No amoCRM
    request is made; `freshness` says how current the mirror is. Unknown → 404.
    """
    owner_id = _owner()
    found = people.lookup(
        owner_id,
        telegram_id=query.telegram_id,
        phone=query.phone,
        email=query.email,
        external_id=query.external_id,
        channel=query.channel,
    )
    if found is None:
        return problem(404, "Not Found", "No such person in this account's mirror.")
    return PersonOut.model_validate(found)


@bp.get("/api/crm/search")
@csrf.exempt
@limiter.limit(_rate_limit, key_func=_limit_key)
@spec.validate(
    resp=Responses(HTTP_200=SearchOut, **_ERRORS),
    tags=["bot"],
    security=BOT_SECURITY,
    operation_id="crm_search",
)
def crm_search(query: SearchQuery) -> Any:
    """Full-text search over the key owner's contacts, deals and notes, best match first."""
    owner_id = _owner()
    kinds = search.parse_types(query.types)
    if kinds is None:
        return problem(
            400, "Bad Request", "types: a comma-separated subset of contacts,leads,notes"
        )
    if not search.words_of(query.q):
        return problem(400, "Bad Request", "q: give at least one word (letters or digits).")
    items = search.search(owner_id, query.q, kinds=kinds, limit=query.limit)
    return SearchOut.model_validate(
        {"query": query.q, "items": items, "freshness": people.freshness(owner_id)}
    )
