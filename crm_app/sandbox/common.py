"""Request helpers shared by the blueprints: the sandbox, the caller's account, bodies, origin."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import current_app, g, request

from crm_app.sandbox import errors
from crm_app.sandbox.errors import ApiError
from crm_app.sandbox.hal import Renderer
from crm_app.sandbox.query import parse_nested
from crm_app.sandbox.store import Account

if TYPE_CHECKING:
    from crm_app.sandbox.state import Sandbox

WRITE_LIMIT = 250


def sandbox() -> Sandbox:
    sb: Sandbox = current_app.config["SANDBOX"]
    return sb


def account() -> Account:
    """The account the access token belongs to (set by the API gate)."""
    acc: Account = g.account
    return acc


def user_id() -> int:
    uid: int = g.user_id
    return uid


def origin() -> str:
    """Links are absolute and use the origin the client called (one origin serves everything)."""
    return request.host_url.rstrip("/")


def renderer() -> Renderer:
    return Renderer(account(), origin(), sandbox().config.multitext_enum_keys)


def args() -> dict[str, Any]:
    return parse_nested(request.args.items(multi=True))


def with_set(values: dict[str, Any]) -> frozenset[str]:
    raw = values.get("with")
    if not isinstance(raw, str):
        return frozenset()
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def read_json() -> Any:
    """The JSON body whatever the Content-Type; an empty body is amoCRM's documented 400."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(errors.empty_body())
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(errors.problem(400, "Request body is not valid JSON")) from None


def read_batch() -> list[Any]:
    """A write body: a non-empty JSON array of at most 250 items."""
    body = read_json()
    if isinstance(body, dict):
        raise ApiError(
            errors.validation(
                [errors.item_error("0", "InvalidType", "", "This value should be of type array.")]
            )
        )
    if not isinstance(body, list) or not body:
        raise ApiError(errors.empty_body())
    if len(body) > WRITE_LIMIT:
        raise ApiError(errors.problem(422, "Limit 250 per page"))
    return body


def read_object() -> dict[str, Any]:
    body = read_json()
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return body[0]
    if not isinstance(body, dict) or not body:
        raise ApiError(errors.empty_body())
    return body
