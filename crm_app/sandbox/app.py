"""The sandbox Flask app: the API gate (auth, block, rate limit, 402, faults), logging, errors."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from crm_app.sandbox import errors, limits
from crm_app.sandbox.errors import ApiError

if TYPE_CHECKING:
    from crm_app.sandbox.state import Sandbox

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
LOGGED_BODY_LIMIT = 256 * 1024


def create_app(sandbox: Sandbox) -> Flask:
    from crm_app.sandbox import admin, amojo_views, api, api_meta, api_more, oauth_views, telegram

    app = Flask("crm_app.sandbox")
    app.config["SANDBOX"] = sandbox
    app.url_map.strict_slashes = False
    for blueprint in (
        api_meta.bp,
        api_more.bp,
        amojo_views.bp,
        telegram.bp,
        api.bp,
        oauth_views.bp,
        admin.bp,
    ):
        app.register_blueprint(blueprint)

    @app.before_request
    def gate() -> Response | None:
        g.started = time.perf_counter()
        path = request.path
        if path.startswith("/_sandbox"):
            g.kind = "admin"
            return None
        if path.startswith("/api/"):
            g.kind = "api"
            return _api_gate(sandbox)
        g.kind = "oauth" if path.startswith(("/oauth", "/oauth2")) else "other"
        return None

    @app.after_request
    def record(response: Response) -> Response:
        late = g.get("fault_after")
        if late is not None:
            if late.get("delay"):
                time.sleep(late["delay"])
            if late["status"] >= 400:
                response = Response(
                    f"{late['status']} sandbox fault",
                    status=late["status"],
                    content_type="text/html",
                )
        if g.get("kind") != "admin":
            _log(sandbox, response)
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return exc.response

    @app.errorhandler(404)
    def not_found(_exc: HTTPException) -> Response:
        return errors.problem(404, f"Cannot {request.method} {request.url}")

    @app.errorhandler(405)
    def not_allowed(_exc: HTTPException) -> Response:
        return errors.problem(405, "Method Not Allowed")

    @app.errorhandler(Exception)
    def crashed(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return errors.problem(exc.code or 500, exc.description or "Error")
        logger.exception("sandbox request failed")
        return _internal_error()

    return app


def _internal_error() -> Response:
    body = {
        "title": "ErrInternalServer",
        "status": 500,
        "detail": "Our team are probably already working on the elimination of the problem",
        "trace_id": str(uuid.uuid4()),
    }
    return errors.json_response(body, 500, "application/problem+json")


def _api_gate(sb: Sandbox) -> Response | None:
    """What amoCRM checks before a route runs; unknown routes fall through to 404/405."""
    if request.routing_exception is not None:
        return None
    cfg = sb.config
    header = request.headers.get("Authorization", "")
    raw = header[7:].strip() if header[:7].lower() == "bearer " else None
    token = sb.tokens.authenticate(raw)
    if token is None:
        return errors.unauthorized(cfg.unauthorized_lang)
    account = sb.account_by_id(token.account_id)
    g.account, g.client_id, g.user_id = account, token.client_id, token.user_id
    if sb.limiter.is_blocked(account.id):
        return limits.forbidden(cfg)
    acting = request.headers.get("X-Context-User-ID")
    if acting:
        # Only tokens granted by an admin may act as another user (https://www.amocrm.ru/developers/content/oauth/scopes).
        granter = account.user(token.user_id)
        target = account.user(int(acting)) if acting.isdigit() else None
        if granter is None or not granter.is_admin or target is None:
            return errors.unauthorized(cfg.unauthorized_lang)
        g.user_id = target.id
    if not sb.limiter.allow(token.client_id, account.id):
        sb.limiter.violation(account.id)
        return limits.too_many(cfg)
    if cfg.payment_required == "all" or (
        cfg.payment_required == "writes" and request.method in WRITE_METHODS
    ):
        return errors.problem(402, "Payment required")
    fault = sb.take_fault(request.method, request.path) if sb.faults else None
    if fault is not None and fault.get("after"):
        # The write happens; only its answer is lost (slow, or replaced by an error) — the
        # case where a client cannot know whether its write landed.
        g.fault_after = fault
        return None
    if fault is not None:
        if fault.get("delay"):
            time.sleep(fault["delay"])
        if fault["status"] == 500:
            return _internal_error()
        if fault["status"] >= 400:
            return Response(
                f"{fault['status']} sandbox fault", status=fault["status"], content_type="text/html"
            )
    return None


def _log(sb: Sandbox, response: Response) -> None:
    query = request.query_string.decode("utf-8", "replace")
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path + (f"?{query}" if query else ""),
        "status": response.status_code,
        "ts": time.time(),
        "kind": g.get("kind", "other"),
        "client_id": g.get("client_id"),
        "account_id": getattr(g.get("account"), "id", None),
        "duration_ms": round(
            (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
        ),
        "user_agent": request.headers.get("User-Agent"),
    }
    length = request.content_length or 0
    if request.method in WRITE_METHODS and 0 < length <= LOGGED_BODY_LIMIT and g.kind == "api":
        try:
            entry["json"] = json.loads(request.get_data(cache=True))
        except ValueError:
            entry["json"] = None
    sb.log.add(entry)
