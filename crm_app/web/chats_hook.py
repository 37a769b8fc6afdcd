"""amojo's channel hook: `POST /webhooks/amojo/<scope_id>`, answered at once (sent only once).

On PostgreSQL the WSGI fast path in `web/webhooks.py` answers it through `fast_answer` before
Flask's request cycle; this view serves the other databases (and WEBHOOK_FAST_PATH=0).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, request
from werkzeug.wsgi import get_input_stream

from crm_app.extensions import csrf
from crm_app.services.availability import database_unavailable
from crm_app.services.chats import hook
from crm_app.services.chats.intake import channel_hook
from crm_app.web.respond import json_response

logger = logging.getLogger(__name__)

bp = Blueprint("chats_hook", __name__)

PREFIX = "/webhooks/amojo/"
MAX_SCOPE = 160


def _limit(app: Flask) -> int:
    return int(app.config.get("WEBHOOK_MAX_BODY") or 256 * 1024)


@bp.post("/webhooks/amojo/<scope_id>")
@csrf.exempt
def amojo_hook(scope_id: str) -> Response:
    if (request.content_length or 0) > _limit(current_app) or len(scope_id) > MAX_SCOPE:
        abort(413, description="Hook too large.")
    try:
        stored = channel_hook(scope_id, request.get_data(), request.headers.get("X-Signature"))
    except hook.HookRefused as exc:
        abort(exc.status, description=exc.message)
    return json_response({"ok": True, "stored": stored is not None})


def fast_answer(app: Flask, environ: dict[str, Any]) -> tuple[int, str, dict[str, Any]] | None:
    """(status, detail, JSON body) for a hook the fast path takes; None hands it to Flask."""
    scope_id = environ.get("PATH_INFO", "")[len(PREFIX) :]
    if not scope_id or "/" in scope_id or not hook.fast_path_available(app):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 400, "Bad Content-Length.", {}
    limit = _limit(app)
    if length > limit or len(scope_id) > MAX_SCOPE:
        return 413, "Hook too large.", {}
    raw = get_input_stream(environ, safe_fallback=True).read(limit + 1)
    if len(raw) > limit:
        return 413, "Hook too large.", {}
    try:
        stored = hook.accept_fast(app, scope_id, raw, environ.get("HTTP_X_SIGNATURE"))
    except hook.HookRefused as exc:
        return exc.status, exc.message, {}
    except Exception as exc:
        if database_unavailable(exc):
            return 503, "The hook could not be stored; the database is unavailable.", {}
        logger.exception("channel hook fast path failed")
        return 500, "Internal error; it has been logged.", {}
    return 200, "", {"ok": True, "stored": stored}
