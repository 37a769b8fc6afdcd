"""amojo's channel hook: `POST /webhooks/amojo/<scope_id>`, answered at once (sent only once)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, request

from crm_app.extensions import csrf
from crm_app.services.chats.intake import HookRefused, channel_hook
from crm_app.web.respond import json_response

bp = Blueprint("chats_hook", __name__)


@bp.post("/webhooks/amojo/<scope_id>")
@csrf.exempt
def amojo_hook(scope_id: str) -> Response:
    limit = int(current_app.config.get("WEBHOOK_MAX_BODY") or 256 * 1024)
    if (request.content_length or 0) > limit or len(scope_id) > 160:
        abort(413, description="Hook too large.")
    try:
        stored = channel_hook(scope_id, request.get_data(), request.headers.get("X-Signature"))
    except HookRefused as exc:
        abort(exc.status, description=exc.message)
    return json_response({"ok": True, "stored": stored is not None})
