"""HTTP for the Chats API emulation: signed `/v2/origin/custom/...` routes, the CRM's
`/api/v4/contacts/chats`, and `/_sandbox/chats/...` for a manager working in amoCRM."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from crm_app.amocrm.chats_signing import date_fresh, request_signature_ok
from crm_app.sandbox import common, errors
from crm_app.sandbox.amojo import Channel, ChatError, ChatHub, Connection
from crm_app.sandbox.errors import ApiError

bp = Blueprint("sandbox_amojo", __name__)
BASE = "/v2/origin/custom"


def hub() -> ChatHub:
    return common.sandbox().chats


def _error(exc: ChatError) -> Response:
    return errors.json_response(exc.body, exc.code)


def _signed_body(secret: str) -> dict[str, Any]:
    """Check X-Signature (and the Date's 15 minutes) exactly as documented; the JSON body."""
    if hub().fault_status is not None:
        raise ChatError(hub().fault_status or 503, "SANDBOX_FAULT", "service unavailable")
    raw = request.get_data(cache=True)
    headers = {
        k: request.headers.get(k, "")
        for k in ("Content-MD5", "Content-Type", "Date", "X-Signature")
    }
    ok = request_signature_ok(secret, request.method, request.path, headers, raw)
    if ok and not date_fresh(headers["Date"], common.sandbox().clock.time()):
        ok = False
    if not ok:
        raise ChatError(403, "ORIGIN_INVALID_SIGNATURE", "invalid signature")
    if request.method == "GET":
        return {}
    if request.mimetype != "application/json":
        raise ChatError(400, "ORIGIN_INVALID_REQUEST", "only application/json is accepted")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ChatError(400, "ORIGIN_INVALID_REQUEST", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ChatError(400, "ORIGIN_INVALID_REQUEST", "body must be a JSON object")
    return body


def _scoped(scope: str) -> tuple[Connection, dict[str, Any]]:
    conn = hub().connection(scope)
    body = _signed_body(hub().channel(conn.channel_id).secret)
    return conn, body


@bp.errorhandler(ChatError)
def chat_error(exc: ChatError) -> Response:
    return _error(exc)


@bp.post(f"{BASE}/<channel_id>/connect")
def connect(channel_id: str) -> Response:
    channel = hub().channel(channel_id)
    return errors.json_response(hub().connect(channel, _signed_body(channel.secret)))


@bp.route(f"{BASE}/<channel_id>/disconnect", methods=["DELETE"])
def disconnect(channel_id: str) -> Response:
    channel = hub().channel(channel_id)
    hub().disconnect(channel, _signed_body(channel.secret))
    return Response(b"", status=200)


@bp.post(f"{BASE}/<scope>/chats")
def create_chat(scope: str) -> Response:
    conn, body = _scoped(scope)
    return errors.json_response(hub().create_chat(conn, body))


@bp.post(f"{BASE}/<scope>")
def new_message(scope: str) -> Response:
    conn, body = _scoped(scope)
    return errors.json_response(hub().new_message(conn, body))


@bp.post(f"{BASE}/<scope>/<msgid>/delivery_status")
def delivery_status(scope: str, msgid: str) -> Response:
    conn, body = _scoped(scope)
    hub().delivery_status(conn, msgid, body)
    return Response(b"", status=200)


@bp.post(f"{BASE}/<scope>/typing")
def typing(scope: str) -> Response:
    _scoped(scope)
    return Response(b"", status=204)


@bp.get(f"{BASE}/<scope>/chats/<chat_id>/history")
def history(scope: str, chat_id: str) -> Response:
    conn, _ = _scoped(scope)
    offset = request.args.get("offset", "0")
    limit = request.args.get("limit", "50")
    if not offset.isdigit() or not limit.isdigit():
        raise ChatError(400, "ORIGIN_INVALID_REQUEST", "offset and limit must be integers")
    items = hub().history(conn, chat_id, int(offset), min(int(limit), 50))
    if not items:
        return errors.no_content()
    return errors.json_response({"messages": items})


# --- the CRM side: /api/v4/contacts/chats (behind the API gate: token, limits) ---------------
@bp.get("/api/v4/contacts/chats")
def contact_chats() -> Response:
    values = common.args()
    acc = common.account()
    caller = acc.user(common.user_id())
    if caller is None or not caller.is_admin:
        # Documented as admin-only (https://www.amocrm.ru/developers/content/crm_platform/contacts-api).
        return errors.problem(403, "Access denied: admin rights are required")
    wanted_chats = _list_arg(values.get("chat_id"))
    wanted_contacts = {int(v) for v in _list_arg(values.get("contact_id")) if str(v).isdigit()}
    links = [
        link
        for link in hub().links(acc)
        if (not wanted_chats or link["chat_id"] in wanted_chats)
        and (not wanted_contacts or link["contact_id"] in wanted_contacts)
    ]
    if not links:
        return errors.no_content()
    return errors.hal({"_total_items": len(links), "_embedded": {"chats": links}})


@bp.post("/api/v4/contacts/chats")
def link_contact_chats() -> Response:
    acc = common.account()
    items = common.read_batch()
    done = []
    problems = []
    for index, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("chat_id"), str)
        contact_id = item.get("contact_id") if isinstance(item, dict) else None
        if (
            not ok
            or not isinstance(contact_id, int)
            or acc.tables["contacts"].get(contact_id) is None
        ):
            problems.append(
                {
                    "request_id": str(index),
                    "errors": [
                        {
                            "code": "NotSupportedChoice",
                            "path": "contact_id" if ok else "chat_id",
                            "detail": "The value you selected is not a valid choice.",
                        }
                    ],
                }
            )
            continue
        try:
            link = hub().link_contact(acc, item["chat_id"], contact_id)
        except KeyError:
            problems.append(
                {
                    "request_id": str(index),
                    "errors": [
                        {
                            "code": "NotSupportedChoice",
                            "path": "chat_id",
                            "detail": "The value you selected is not a valid choice.",
                        }
                    ],
                }
            )
            continue
        if item.get("request_id") is not None:
            link["request_id"] = str(item["request_id"])
        done.append(link)
    if problems:
        raise ApiError(errors.validation(problems))
    return errors.hal({"_total_items": len(done), "_embedded": {"chats": done}})


def _list_arg(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [str(v) for v in value.values()]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


# --- /_sandbox: channels, chats and a manager's replies -----------------------------------
@bp.post("/_sandbox/chat-channels")
def register_channel() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body.get("id") or not body.get("secret"):
        return errors.problem(400, "id and secret are required")
    channel = hub().register(
        Channel(
            id=str(body["id"]),
            secret=str(body["secret"]),
            hook_url=str(body.get("hook_url") or ""),
            name=str(body.get("name") or "sandbox-channel"),
            accounts=body.get("accounts"),
        )
    )
    return errors.json_response(
        {"id": channel.id, "bot_id": channel.bot_id, "hook_url": channel.hook_url}, 201
    )


@bp.patch("/_sandbox/chat-channels/<channel_id>")
def change_channel(channel_id: str) -> Response:
    channel = hub().channels.get(channel_id)
    body = request.get_json(silent=True)
    if channel is None:
        return errors.problem(404, "no such channel")
    if not isinstance(body, dict):
        return errors.problem(400, "a JSON object is required")
    if "hook_url" in body:
        channel.hook_url = str(body["hook_url"] or "")
    return errors.json_response({"id": channel.id, "hook_url": channel.hook_url})


@bp.get("/_sandbox/chats")
def list_chats() -> Response:
    h = hub()
    with h.lock:
        chats = [_chat_view(h, c) for c in h.chats.values()]
    return errors.json_response(
        {
            "chats": chats,
            "connections": [
                {"scope_id": c.scope_id, "account_id": c.account_id, "channel_id": c.channel_id}
                for c in h.connections.values()
            ],
        }
    )


@bp.get("/_sandbox/chats/<chat_id>")
def show_chat(chat_id: str) -> Response:
    h = hub()
    with h.lock:
        chat = h.chats.get(chat_id)
        if chat is None:
            return errors.problem(404, "no such chat")
        view = _chat_view(h, chat)
        view["messages"] = [h._history_item(chat, m) for m in chat.messages]
    return errors.json_response(view)


@bp.post("/_sandbox/chats/<chat_id>/reply")
def reply(chat_id: str) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        return errors.problem(400, "text is required")
    media = body.get("media") if isinstance(body.get("media"), dict) else None
    try:
        result = hub().manager_reply(chat_id, body["text"], body.get("user_id"), media)
    except KeyError:
        return errors.problem(404, "no such chat")
    except ChatError as exc:
        return _error(exc)
    return errors.json_response(result, 201)


@bp.patch("/_sandbox/chat-faults")
def chat_faults() -> Response:
    """``{"status": 503}`` makes every Chats API call fail that way; ``{"status": null}`` heals."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "status" not in body:
        return errors.problem(400, "status is required (a number, or null)")
    status = body["status"]
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        return errors.problem(400, "status must be 400-599 or null")
    hub().fault_status = status
    return errors.json_response({"status": status})


@bp.get("/_sandbox/chat-hooks")
def hook_log() -> Response:
    h = hub()
    with h.lock:
        return errors.json_response({"deliveries": list(h.hook_log)})


def _chat_view(h: ChatHub, chat: Any) -> dict[str, Any]:
    return {
        "id": chat.id,
        "scope_id": chat.scope_id,
        "conversation_id": chat.conversation_id,
        "client": dict(chat.client),
        "contact_id": chat.contact_id,
        "lead_id": chat.lead_id,
        "talk_id": chat.talk_id,
        "message_count": len(chat.messages),
    }
