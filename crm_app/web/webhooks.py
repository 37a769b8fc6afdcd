"""amoCRM webhook endpoint (store, acknowledge, enqueue) and the admin webhook card."""

from __future__ import annotations

import hashlib
import logging
import time
from functools import wraps
from typing import Any, NoReturn

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from crm_app.auth.access import current_actor, require_write, resolve_owner_id
from crm_app.extensions import csrf, login_manager
from crm_app.models import ConnectionStatus
from crm_app.services.webhooks import enqueue, fastpath, inbox
from crm_app.services.webhooks.parse import MalformedBody, inspect_envelope

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

_FORM = "application/x-www-form-urlencoded"
_MAX_TOKEN = 128


class _TokenCache:
    """token hash → (owner_id, account_id, subdomain, status) for a few seconds.

    The endpoint is benchmarked and amoCRM may send bursts; this spares a database round trip
    per delivery. Only hits are cached (an unknown token always asks the database), entries
    live WEBHOOK_TOKEN_CACHE_SECONDS (a rotated token or a disconnect is seen that much later),
    and the size is bounded.
    """

    def __init__(self, ttl: float, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self.items: dict[str, tuple[float, fastpath.TokenOwner]] = {}

    def get(self, digest: str) -> fastpath.TokenOwner | None:
        hit = self.items.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, digest: str, row: fastpath.TokenOwner) -> None:
        if len(self.items) >= self.size:
            self.items.clear()  # rare: more live owners than slots; start over
        self.items[digest] = (time.monotonic() + self.ttl, row)


def _lookup(token: str) -> fastpath.TokenOwner | None:
    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    ttl = float(current_app.config.get("WEBHOOK_TOKEN_CACHE_SECONDS", 5))
    cache: _TokenCache | None = current_app.extensions.get("crm_webhook_tokens")
    if cache is None or cache.ttl != ttl:
        cache = current_app.extensions["crm_webhook_tokens"] = _TokenCache(ttl)
    row = cache.get(digest) if ttl > 0 else None
    if row is not None:
        return row
    found = fastpath.lookup_token(digest)
    if found is not None and ttl > 0:
        cache.put(digest, found)
    return found


def _read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        abort(413, description=f"Webhook body larger than {limit} bytes.")
    # Chunked bodies carry no length: read one byte past the limit to notice.
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        abort(413, description=f"Webhook body larger than {limit} bytes.")
    return body


def _storage_down() -> NoReturn:
    # Not stored means not acknowledged: amoCRM retries a 5xx (5 min, 15 min, ...).
    logger.exception("webhook delivery could not be stored")
    abort(503, description="The delivery could not be stored; send it again later.")


def _check_account(cfg: Any, account_id: str | None, subdomain: str | None) -> None:
    if not account_id and not subdomain:
        abort(400, description="The body has no account[id] or account[subdomain].")
    if cfg.status == ConnectionStatus.DISCONNECTED:
        # We unsubscribe on disconnect; a late hook has nothing to apply to.
        abort(409, description="The amoCRM integration is disconnected.")
    expected_id = cfg.account_id
    expected_sub = (cfg.subdomain or "").strip().lower()
    if expected_id is None and not expected_sub:
        abort(409, description="No amoCRM account is connected for this webhook URL.")
    if account_id and expected_id is not None and account_id.strip() != str(expected_id):
        abort(403, description="account[id] does not match the connected amoCRM account.")
    if subdomain and expected_sub and subdomain.strip().lower() != expected_sub:
        abort(403, description="account[subdomain] does not match the connected amoCRM account.")
    if expected_id is not None and not account_id and not expected_sub:
        abort(403, description="account[id] is missing.")


@bp.post("/webhooks/amocrm/<token>")
@bp.post("/webhooks/amocrm")
@csrf.exempt
def receive(token: str | None = None) -> Response:
    """Store the raw delivery, answer 200 at once, and let the worker apply it."""
    token = token or request.args.get("token") or ""
    if not token or len(token) > _MAX_TOKEN:
        abort(404, description="Unknown webhook URL.")
    try:
        cfg = _lookup(token)
    except Exception:
        _storage_down()
    if cfg is None:
        abort(404, description="Unknown webhook URL.")
    mimetype = request.mimetype
    if mimetype and mimetype != _FORM:
        abort(415, description=f"Webhooks must be sent as {_FORM}.")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        abort(415, description="Compressed webhook bodies are not accepted.")
    body = _read_body(int(current_app.config["WEBHOOK_MAX_BODY"]))
    try:
        envelope = inspect_envelope(body)
    except MalformedBody as exc:
        abort(400, description=f"Malformed webhook body: {exc}.")
    _check_account(cfg, envelope.account_id, envelope.subdomain)
    if not envelope.has_payload:
        abort(400, description="The body names no events.")
    try:
        new_id = inbox.store_delivery(cfg.owner_id, body, request.headers.get("X-Amocrm-Requestid"))
    except Exception:
        _storage_down()
    if new_id is not None:
        enqueue.kick(cfg.owner_id)
    return Response("OK", status=200, mimetype="text/plain")


# -- the admin card ---------------------------------------------------------------------------------


def _card(owner_id: int, can_write: bool, message: str | None = None) -> str:
    from crm_app.services.webhooks.subscription import subscription_state

    state = subscription_state(owner_id, reveal=can_write)
    return render_template(
        "crm/partials/_webhooks.html",
        state=state,
        counts=inbox.counts(owner_id),
        recent=inbox.recent(owner_id, 5),
        last_error=inbox.last_error(owner_id),
        can_write=can_write,
        owner_id=owner_id,
        owner_param=request.args.get("owner_id") or None,
        message=message,
    )


def _login_required(view: Any) -> Any:
    """Flask-Login's gate, except that an HTMX slot gets 401 + HX-Redirect, not a login form."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            if request.headers.get("HX-Request"):
                resp = current_app.make_response(("", 401))
                resp.headers["HX-Redirect"] = url_for("auth.login", next="/admin/crm")
                return resp
            return login_manager.unauthorized()
        return view(*args, **kwargs)

    return wrapper


@bp.get("/admin/crm/ui/webhooks")
@_login_required
def panel() -> Response:
    actor = current_actor()
    assert actor is not None
    owner_id = resolve_owner_id(actor, request.args.get("owner_id"))
    resp = current_app.make_response(_card(owner_id, actor.can_write))
    resp.headers["Vary"] = "HX-Request"
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/admin/crm/ui/webhooks/subscribe")
@_login_required
def subscribe_view() -> Any:
    actor = current_actor()
    assert actor is not None
    owner_id = resolve_owner_id(actor, request.args.get("owner_id"))
    require_write(actor)
    from crm_app.services.webhooks.subscription import subscribe

    result = subscribe(owner_id)
    if result.get("subscribed"):
        message = "subscribed"
    elif result.get("manual"):
        message = "manual"
    else:
        message = "error"
    if not request.headers.get("HX-Request"):
        # Without JavaScript the form posts here; go back to the page.
        return redirect(url_for("pages.crm_page"), code=303)
    resp = current_app.make_response(_card(owner_id, True, message))
    resp.headers["Cache-Control"] = "no-store"
    return resp
