"""Inbound leads: the widget/bot API, the Telegram webhook and the admin card (API keys, requests)."""

from __future__ import annotations

import logging
import re

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    request,
    url_for,
)
from flask_babel import gettext as _
from pydantic import ValidationError

from crm_app.auth.access import page_login_required
from crm_app.extensions import csrf, limiter
from crm_app.models import ApiKey
from crm_app.services import inbound as svc
from crm_app.services.chats import intake as chats_intake
from crm_app.services.inbound import telegram
from crm_app.services.inbound.keys import MAX_NAME_LEN
from crm_app.services.inbound.views import inbound_panel, request_view
from crm_app.services.inbound.views import retry as retry_inbound
from crm_app.web.context import request_context
from crm_app.web.errors import problem
from crm_app.web.respond import json_response, respond

logger = logging.getLogger(__name__)

bp = Blueprint("inbound", __name__)

_IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces


# -- the widget/bot API ----------------------------------------------------------------------------


def _unauthorized(detail: str) -> Response:
    resp = problem(401, "Unauthorized", detail)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="inbound"'
    return resp


def _api_key() -> ApiKey:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        abort(_unauthorized("Send the API key as 'Authorization: Bearer <key>'."))
    key = svc.authenticate_api_key(value.strip())
    if key is None:
        abort(_unauthorized("Unknown or revoked API key."))
    return key


def _limit_key() -> str:
    # Per key when one is sent (a busy widget backend shares one IP with others), else per IP.
    header = request.headers.get("Authorization", "")
    if header:
        import hashlib

        return "inbound:" + hashlib.sha256(header.encode("utf-8")).hexdigest()[:24]
    return "inbound-ip:" + (request.remote_addr or "?")


def _rate_limit() -> str:
    return str(current_app.config.get("INBOUND_RATE_LIMIT") or "600 per minute")


@bp.post("/api/crm/inbound")
@csrf.exempt
@limiter.limit(_rate_limit, key_func=_limit_key)
def submit_inbound() -> Response:
    """First contact (or a later message) from the widget backend or the bot → 202."""
    key = _api_key()
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return problem(400, "Bad Request", "The body must be a JSON object.")
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not _IDEMPOTENCY_RE.match(idem):
        return problem(400, "Bad Request", "Idempotency-Key: 1-128 printable ASCII characters.")
    try:
        payload = svc.parse_payload(data)
    except ValidationError as exc:
        return problem(
            400,
            "Bad Request",
            "The request body has invalid fields.",
            errors=svc.field_errors(exc),
        )
    req = svc.submit(key.owner_id, payload, idempotency_key=idem, api_key_id=key.id)
    chats_intake.from_widget(key.owner_id, payload.model_dump(), req.public_id)
    location = url_for("inbound.inbound_status", public_id=req.public_id)
    return json_response(
        {"id": req.public_id, "status": req.status}, 202, headers={"Location": location}
    )


@bp.get("/api/crm/inbound/<public_id>")
@csrf.exempt
@limiter.limit(_rate_limit, key_func=_limit_key)
def inbound_status(public_id: str) -> Response:
    """Status of one request of the key's owner; anyone else's id is simply not found."""
    key = _api_key()
    view = request_view(key.owner_id, public_id)
    if view is None:
        abort(404, description="No such inbound request.")
    return json_response(view)


# -- Telegram --------------------------------------------------------------------------------------


@bp.post("/webhooks/telegram/<secret>")
@csrf.exempt
def telegram_webhook(secret: str) -> Response:
    """A Bot API Update: a private message becomes an inbound request; the rest is ignored."""
    cfg = telegram.config_for_path(secret)
    if cfg is None:
        abort(404, description="Not found.")
    if not telegram.header_ok(cfg, request.headers.get(telegram.HEADER)):
        abort(401, description="Missing or wrong X-Telegram-Bot-Api-Secret-Token.")
    limit = int(current_app.config.get("WEBHOOK_MAX_BODY") or 256 * 1024)
    if (request.content_length or 0) > limit:
        abort(413, description="Update too large.")
    update = request.get_json(silent=True)
    if not isinstance(update, dict):
        abort(400, description="The body must be a Bot API Update (JSON object).")
    req = telegram.handle_update(cfg, update)
    chats_intake.from_telegram(cfg.owner_id, (cfg.telegram_secret_hash or "")[:8], update)
    if req is None:
        logger.debug("telegram update ignored for owner %s", cfg.owner_id)
    return jsonify({"ok": True})


# -- the admin card ----------------------------------------------------------------------------------


def _card(*, new_key: str | None = None, error: str | None = None, status: int = 200) -> Response:
    ctx = request_context()
    # The fresh key is in this response only: respond() keeps it out of every cache.
    return respond(
        "crm/partials/_inbound.html",
        status=status,
        title=_("Входящие заявки"),
        panel=inbound_panel(ctx.owner_id),
        api_url=url_for("inbound.submit_inbound"),
        new_key=new_key,
        error=error,
    )


@bp.get("/admin/crm/ui/inbound")
@page_login_required
def inbound_card() -> Response:
    return _card()


@bp.post("/admin/crm/ui/inbound/keys")
@page_login_required
def create_key() -> Response:
    ctx = request_context(write=True)
    name = (request.form.get("name") or "").strip()
    try:
        plain, _row = svc.create_api_key(ctx.owner_id, name)
    except ValueError:
        error = _("Название ключа: не длиннее %(n)d символов.", n=MAX_NAME_LEN)
        return _card(error=error, status=422)
    return _card(new_key=plain)


@bp.post("/admin/crm/ui/inbound/keys/<int:key_id>/revoke")
@page_login_required
def revoke_key(key_id: int) -> Response:
    ctx = request_context(write=True)
    if svc.revoke_api_key(ctx.owner_id, key_id) is None:
        abort(404, description="No such key.")
    return _card()


@bp.post("/admin/crm/ui/inbound/requests/<public_id>/retry")
@page_login_required
def retry(public_id: str) -> Response:
    ctx = request_context(write=True)
    if retry_inbound(ctx.owner_id, public_id) is None:
        abort(404, description="No such inbound request.")
    return _card()
