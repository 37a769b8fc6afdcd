"""/_sandbox/ administration for tests and the demo: never rate limited, never in the request log."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode

import requests
from flask import Blueprint, Response, request

from crm_app.sandbox import common, errors
from crm_app.sandbox.errors import ApiError
from crm_app.sandbox.hal import Renderer
from crm_app.sandbox.store import Account
from crm_app.sandbox.writes import ValidationFailed, Writer

bp = Blueprint("sandbox_admin", __name__, url_prefix="/_sandbox")

KINDS = "any(leads,contacts,companies,tasks)"
DISCONNECT_AGENT = "amoService-oAuth-Code-Sender/1.0"


def _fail(status: int, message: str) -> ApiError:
    return ApiError(errors.json_response({"error": message}, status))


def _body() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True) if request.get_data() else {}
    if body is None or not isinstance(body, dict):
        raise _fail(400, "JSON object expected")
    return body


def _items() -> tuple[Any, list[Any]]:
    """The raw JSON body and its items: an array's elements, or the one object."""
    raw = request.get_json(force=True, silent=True)
    items = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else None
    if not items:
        raise _fail(400, "JSON object or array expected")
    return raw, items


def _created(raw: Any, rendered: list[dict[str, Any]]) -> Response:
    """201 with a list for an array body, the one record for an object body."""
    return errors.json_response(rendered if isinstance(raw, list) else rendered[0], 201)


def _account(key: Any = None) -> Account:
    sb = common.sandbox()
    wanted = key if key is not None else request.args.get("account")
    account = sb.find_account(wanted)
    if account is None:
        raise _fail(404, f"unknown account {wanted!r}")
    return account


def _integration(body: dict[str, Any]) -> Any:
    integration = common.sandbox().tokens.integration(body.get("client_id"))
    if integration is None:
        raise _fail(404, "unknown client_id")
    return integration


def _account_public(account: Account) -> dict[str, Any]:
    sb = common.sandbox()
    return {
        "id": account.id,
        "subdomain": account.subdomain,
        "name": account.name,
        "domain": f"{account.subdomain}.{sb.domain}",
        "users": [
            {"id": u.id, "name": u.name, "email": u.email, "is_admin": u.is_admin}
            for u in account.users
        ],
        "pipelines": [
            {
                "id": p.id,
                "name": p.name,
                "is_main": p.is_main,
                "statuses": [s.id for s in p.statuses],
            }
            for p in account.pipelines
        ],
        "counts": {kind: len(table.records) for kind, table in account.tables.items()},
    }


@bp.get("")
@bp.get("/")
def index() -> Response:
    sb = common.sandbox()
    return errors.json_response(
        {
            "accounts": [_account_public(a) for a in sb.accounts],
            "integrations": [i.public() for i in sb.tokens.integrations.values()],
            "config": sb.config.as_dict(),
            "now": sb.clock.now(),
        }
    )


@bp.get("/accounts")
def accounts() -> Response:
    return errors.json_response([_account_public(a) for a in common.sandbox().accounts])


@bp.get("/config")
def get_config() -> Response:
    return errors.json_response(common.sandbox().config.as_dict())


@bp.patch("/config")
def patch_config() -> Response:
    sb = common.sandbox()
    try:
        applied = sb.config.update(_body())
    except (ValueError, TypeError) as exc:
        raise _fail(400, str(exc)) from None
    return errors.json_response({"applied": applied, "config": sb.config.as_dict()})


# --- integrations and tokens ----------------------------------------------------------
@bp.get("/integrations")
def integrations() -> Response:
    return errors.json_response([i.public() for i in common.sandbox().tokens.integrations.values()])


@bp.post("/integrations")
def register() -> Response:
    body = _body()
    for key in ("client_id", "client_secret", "redirect_uri"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise _fail(400, f"{key} is required")
    integration = common.sandbox().register_integration(
        body["client_id"],
        body["client_secret"],
        body["redirect_uri"],
        name=body.get("name"),
        disconnect_url=body.get("disconnect_url"),
        accounts=body.get("accounts"),
        scopes=body.get("scopes"),
    )
    return errors.json_response(integration.public(), 201)


@bp.post("/auth-code")
def auth_code() -> Response:
    """A private integration's code: 20 minutes, single use."""
    sb = common.sandbox()
    body = _body()
    integration = _integration(body)
    account = _account(body.get("account"))
    user_id = body.get("user_id", account.admin.id)
    if account.user(user_id) is None:
        raise _fail(404, "unknown user_id")
    code = sb.tokens.issue_code(integration.client_id, account.id, user_id)
    return errors.json_response(
        {
            "code": code.code,
            "expires_in": sb.config.code_ttl,
            "account_id": account.id,
            "subdomain": account.subdomain,
            "redirect_uri": integration.redirect_uri,
        }
    )


@bp.post("/long-lived-token")
def long_lived() -> Response:
    sb = common.sandbox()
    body = _body()
    integration = _integration(body)
    account = _account(body.get("account"))
    days = body.get("days", 365)
    if not isinstance(days, int) or not 1 <= days <= 5 * 366:
        raise _fail(400, "days must be 1 … 1830 (1 day to 5 years)")
    token = sb.tokens.issue_long_lived(integration.client_id, account.id, account.admin.id, days)
    return errors.json_response(
        {"access_token": token.token, "expires_at": token.expires_at, "account_id": account.id}
    )


@bp.post("/tokens/expire")
def expire_tokens() -> Response:
    return errors.json_response({"expired": common.sandbox().tokens.expire_all()})


@bp.post("/disconnect")
def disconnect() -> Response:
    """The admin turns the integration off: tokens are revoked and the disconnect hook is sent."""
    sb = common.sandbox()
    body = _body()
    integration = _integration(body)
    account = _account(body.get("account"))
    revoked = sb.tokens.revoke(integration.client_id, account.id)
    url = body.get("url") or integration.disconnect_url
    result: dict[str, Any] = {"revoked": revoked, "url": None, "status_code": None, "error": None}
    if url:
        message = f"{integration.client_id}|{account.id}".encode()
        signature = hmac.new(
            integration.client_secret.encode(), message, hashlib.sha256
        ).hexdigest()
        query = urlencode(
            {"client_uuid": integration.client_id, "account_id": account.id, "signature": signature}
        )
        full = f"{url}{'&' if '?' in url else '?'}{query}"
        result["url"] = full
        try:
            with requests.Session() as session:
                session.trust_env = False
                reply = session.get(full, headers={"User-Agent": DISCONNECT_AGENT}, timeout=2)
            result["status_code"] = reply.status_code
        except requests.RequestException as exc:
            result["error"] = type(exc).__name__
    return errors.json_response(result)


@bp.post("/unblock")
def unblock() -> Response:
    sb = common.sandbox()
    body = _body()
    account_id = _account(body["account"]).id if body.get("account") else None
    return errors.json_response({"unblocked": sb.limiter.unblock(account_id)})


@bp.post("/clock")
def clock() -> Response:
    sb = common.sandbox()
    body = _body()
    advance = body.get("advance", 0)
    if not isinstance(advance, (int, float)):
        raise _fail(400, "advance must be a number of seconds")
    return errors.json_response({"now": sb.clock.advance(advance), "offset": sb.clock.offset})


@bp.post("/reset")
def reset() -> Response:
    """Forget limits, blocks, logs, deliveries and faults (data and tokens stay)."""
    sb = common.sandbox()
    sb.limiter.reset()
    sb.log.clear()
    sb.dispatcher.clear()
    with sb.faults_lock:
        sb.faults.clear()
    return errors.json_response({"reset": True})


# --- logs -----------------------------------------------------------------------------
@bp.get("/requests")
def request_log() -> Response:
    sb = common.sandbox()
    items = sb.log.items(
        kind=request.args.get("kind"),
        since=int(request.args.get("since", 0) or 0),
        path_prefix=request.args.get("path_prefix"),
        method=request.args.get("method"),
    )
    return errors.json_response(items)


@bp.delete("/requests")
def clear_requests() -> Response:
    common.sandbox().log.clear()
    return errors.no_content()


@bp.get("/webhook-deliveries")
def deliveries() -> Response:
    sb = common.sandbox()
    return errors.json_response(sb.dispatcher.deliveries(int(request.args.get("since", 0) or 0)))


@bp.delete("/webhook-deliveries")
def clear_deliveries() -> Response:
    common.sandbox().dispatcher.clear()
    return errors.no_content()


@bp.get("/webhooks")
def all_webhooks() -> Response:
    sb = common.sandbox()
    hooks: list[dict[str, Any]] = []
    for account in sb.accounts:
        with account.lock:
            hooks.extend(dict(h) for h in account.webhooks.values())
    return errors.json_response(hooks)


@bp.post("/faults")
def add_fault() -> Response:
    """Make the next N API calls under `path` fail with `status` (default 500) or be slow."""
    sb = common.sandbox()
    body = _body()
    fault = {
        "path": body.get("path", "/api/v4/"),
        "status": int(body.get("status", 500)),
        "remaining": int(body.get("count", 1)),
        "method": body.get("method"),
        "delay": float(body.get("delay", 0)),
        # after=true: the request is carried out, then its answer is delayed/replaced.
        "after": bool(body.get("after", False)),
    }
    with sb.faults_lock:
        sb.faults.append(fault)
    return errors.json_response(fault, 201)


@bp.delete("/faults")
def clear_faults() -> Response:
    sb = common.sandbox()
    with sb.faults_lock:
        sb.faults.clear()
    return errors.no_content()


# --- data as a manager would change it --------------------------------------------------
def _writer(account: Account) -> Writer:
    sb = common.sandbox()
    user_id = request.args.get("user_id", type=int) or account.admin.id
    if account.user(user_id) is None:
        raise _fail(404, "unknown user_id")
    return Writer(sb, account, user_id)


def _render(account: Account, kind: str, record: dict[str, Any]) -> dict[str, Any]:
    sb = common.sandbox()
    render = Renderer(account, common.origin(), sb.config.multitext_enum_keys)
    return render.entity(kind, record, frozenset({"contacts", "leads"}))


@bp.get(f"/<{KINDS}:kind>/<int:rid>")
def read_entity(kind: str, rid: int) -> Response:
    account = _account()
    with account.lock:
        record = account.tables[kind].get(rid)
        if record is None:
            raise _fail(404, f"{kind} {rid} not found")
        body = _render(account, kind, record)
    return errors.json_response(body)


@bp.post(f"/<{KINDS}:kind>")
def create(kind: str) -> Response:
    account = _account()
    raw, items = _items()
    try:
        built = _writer(account).create(kind, items)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    with account.lock:
        rendered = [_render(account, kind, record) for record, _rid in built]
    return _created(raw, rendered)


@bp.patch(f"/<{KINDS}:kind>/<int:rid>")
def edit(kind: str, rid: int) -> Response:
    account = _account()
    item = dict(_body())
    item["id"] = rid
    if account.tables[kind].get(rid) is None:
        raise _fail(404, f"{kind} {rid} not found")
    try:
        built = _writer(account).update(kind, [item])
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    with account.lock:
        body = _render(account, kind, built[0][0])
    return errors.json_response(body)


@bp.delete(f"/<{KINDS}:kind>/<int:rid>")
def remove(kind: str, rid: int) -> Response:
    account = _account()
    if _writer(account).delete(kind, rid) is None:
        raise _fail(404, f"{kind} {rid} not found")
    return errors.no_content()


@bp.post("/<any(leads,contacts,companies):kind>/<int:rid>/notes")
def add_note(kind: str, rid: int) -> Response:
    """A note typed by a manager: the same events and `note_*` webhooks as an API-made one."""
    from crm_app.sandbox.relations import Relations

    account = _account()
    raw, items = _items()
    if account.tables[kind].get(rid) is None:
        raise _fail(404, f"{kind} {rid} not found")
    writer = _writer(account)
    try:
        built = Relations(writer.sb, account, writer.user_id).add_notes(kind, items, rid)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    sb = common.sandbox()
    render = Renderer(account, common.origin(), sb.config.multitext_enum_keys)
    with account.lock:
        rendered = [render.note(note) for note, _rid in built]
    return _created(raw, rendered)
