"""amoCRM webhook endpoint (store, acknowledge, enqueue) and the admin webhook card."""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import parse_qs

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    request,
)
from flask_babel import gettext as _
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_input_stream

from crm_app.auth.access import page_login_required
from crm_app.extensions import csrf, limiter
from crm_app.security import HSTS_VALUE, PERMISSIONS_POLICY, REFERRER_POLICY, is_https_deployment
from crm_app.services.webhooks import inbox, spool
from crm_app.services.webhooks import receive as receive_service
from crm_app.services.webhooks.receive import Outcome
from crm_app.web import chats_hook
from crm_app.web.context import request_context
from crm_app.web.respond import respond, to_page, wants_fragment

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

# -- receiving -------------------------------------------------------------------------------------

_PREFIX = "/webhooks/amocrm"


def _problem(outcome: Outcome) -> tuple[bytes, str]:
    """The problem+json body errors.py would render for this status."""
    body = {
        "type": "about:blank",
        "title": HTTP_STATUS_CODES.get(outcome.status, "Error"),
        "status": outcome.status,
        "detail": outcome.detail,
    }
    return json.dumps(body).encode(), "application/problem+json"


@bp.post("/webhooks/amocrm/<token>")
@bp.post("/webhooks/amocrm")
@csrf.exempt
# Never rate-limited: a 429 is an "invalid answer" to amoCRM, and 100 of them disable the hook.
@limiter.exempt
def receive(token: str | None = None) -> Response:
    """Store the raw delivery, answer 200 at once, and let the worker apply it.

    Normally the WSGI fast path below answers before Flask sees the request; this view serves
    when it is switched off (WEBHOOK_FAST_PATH=0) and gives the route its name.
    """
    outcome = receive_service.ingest(
        current_app._get_current_object(),  # type: ignore[attr-defined]  # proxy typed as Flask
        token or request.args.get("token") or "",
        mimetype=request.mimetype,
        encoding=request.headers.get("Content-Encoding", ""),
        length=request.content_length,
        stream=request.stream,
        request_id=request.headers.get("X-Amocrm-Requestid"),
    )
    if outcome.status != 200:
        abort(outcome.status, description=outcome.detail)
    return Response("OK", status=200, mimetype="text/plain")


JSON = "application/json"


class WebhookFastPath:
    """WSGI middleware answering `POST /webhooks/amocrm[/<token>]` without Flask's request cycle.

    On PostgreSQL it answers amojo's channel hooks (`POST /webhooks/amojo/<scope_id>`) too;
    see `web/chats_hook.py`.

    The endpoint must keep up with a bare Flask app (it is benchmarked at >= 50%). Every Flask
    request here pays for session loading, CSRF, the rate limiter, login and security hooks —
    none of which a token-authenticated machine POST uses — which alone cost more than storing
    the delivery. So this layer handles exactly these POSTs with the same service function as
    the view and the same problem+json errors and security headers; every other request goes
    to Flask untouched.
    """

    def __init__(self, app: Flask, wsgi_app: Any) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.swept_in: int | None = None
        https = is_https_deployment(app)
        self.headers = [
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", REFERRER_POLICY),
            ("X-Frame-Options", "DENY"),
            ("Permissions-Policy", PERMISSIONS_POLICY),
            ("Cache-Control", "no-store"),
            *([("Strict-Transport-Security", HSTS_VALUE)] if https else []),
        ]

    def _token(self, environ: dict[str, Any]) -> str | None:
        path = environ.get("PATH_INFO", "")
        if path == _PREFIX:
            values = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            return (values.get("token") or [""])[0]
        if path.startswith(_PREFIX + "/"):
            token = path[len(_PREFIX) + 1 :]
            # Flask's <token> matches one non-empty segment; anything else is not ours.
            return token if token and "/" not in token else None
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.swept_in != os.getpid():
            # Startup sweep: deliveries a previous process spooled during a database outage.
            self.swept_in = os.getpid()
            spool.sweep_leftovers(self.app)
        if environ.get("REQUEST_METHOD") != "POST" or not self.app.config["WEBHOOK_FAST_PATH"]:
            return self.wsgi_app(environ, start_response)
        if environ.get("PATH_INFO", "").startswith(chats_hook.PREFIX):
            answer = chats_hook.fast_answer(self.app, environ)
            if answer is None:
                return self.wsgi_app(environ, start_response)
            status, detail, reply = answer
            if status == 200:
                return self._reply(start_response, status, json.dumps(reply).encode(), JSON)
            return self._reply(start_response, status, *_problem(Outcome(status, detail)))
        token = self._token(environ)
        if token is None:
            return self.wsgi_app(environ, start_response)
        try:
            length = int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None
        except ValueError:
            length = -1
        if length is not None and length < 0:
            outcome = Outcome(400, "Bad Content-Length.")
        else:
            try:
                outcome = receive_service.ingest(
                    self.app,
                    token,
                    mimetype=(environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower(),
                    encoding=environ.get("HTTP_CONTENT_ENCODING", ""),
                    length=length,
                    stream=get_input_stream(environ, safe_fallback=True),
                    request_id=environ.get("HTTP_X_AMOCRM_REQUESTID"),
                )
            except Exception:
                # A bug, not bad input: logged with its traceback, no detail to the caller.
                logger.exception("webhook fast path failed")
                outcome = Outcome(500, "Internal error; it has been logged.")
        if outcome.status == 200:
            return self._reply(start_response, 200, b"OK", "text/plain; charset=utf-8")
        return self._reply(start_response, outcome.status, *_problem(outcome))

    def _reply(self, start_response: Any, status: int, body: bytes, mimetype: str) -> list[bytes]:
        line = f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}"
        headers = [("Content-Type", mimetype), ("Content-Length", str(len(body))), *self.headers]
        start_response(line, headers)
        return [body]


@bp.record_once
def _install_fast_path(state: Any) -> None:
    # Installed always, consulted per request: WEBHOOK_FAST_PATH=0 hands these POSTs to Flask.
    state.app.config.setdefault("WEBHOOK_FAST_PATH", True)
    state.app.wsgi_app = WebhookFastPath(state.app, state.app.wsgi_app)


# -- the admin card ---------------------------------------------------------------------------------


def _card(message: str | None = None, requeued: int = 0) -> Response:
    from crm_app.services.webhooks.subscription import subscription_state
    from crm_app.services.webhooks.watchdog import last_event

    ctx = request_context()
    return respond(
        "crm/partials/_webhooks.html",
        title=_("Вебхуки amoCRM"),
        state=subscription_state(ctx.owner_id, reveal=ctx.can_write),
        counts=inbox.counts(ctx.owner_id),
        recent=inbox.recent(ctx.owner_id, 5),
        last_error=inbox.last_error(ctx.owner_id),
        watchdog=last_event(ctx.owner_id),
        outcome=message,
        requeued=requeued,
    )


@bp.get("/admin/crm/ui/webhooks")
@page_login_required
def panel() -> Response:
    return _card()


@bp.post("/admin/crm/ui/webhooks/subscribe")
@page_login_required
def subscribe_view() -> Response:
    from crm_app.services.webhooks.subscription import subscribe

    ctx = request_context(write=True)
    result = subscribe(ctx.owner_id)
    if result.get("subscribed"):
        outcome = "subscribed"
    elif result.get("manual"):
        outcome = "manual"
    else:
        outcome = "error"
    if not wants_fragment():
        # Without JavaScript the form posts here; back to the page of the same owner.
        return to_page()
    return _card(outcome)


@bp.post("/admin/crm/ui/webhooks/rotate")
@page_login_required
def rotate_view() -> Response:
    """A new secret URL; the old one stops working and the new one is subscribed."""
    from crm_app.services.webhooks.subscription import rotate_url

    ctx = request_context(write=True)
    rotate_url(ctx.owner_id)
    if not wants_fragment():
        return to_page()
    return _card("rotated")


@bp.post("/admin/crm/ui/webhooks/retry-failed")
@page_login_required
def retry_failed_view() -> Response:
    """Failed deliveries back in the queue (after a fix or a reconnect)."""
    from crm_app.services.webhooks import enqueue

    ctx = request_context(write=True)
    count = inbox.requeue_failed(ctx.owner_id)
    if count:
        enqueue.kick(ctx.owner_id)
    if not wants_fragment():
        return to_page()
    return _card("requeued", requeued=count)
