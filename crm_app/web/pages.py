"""The CRM page (/admin/crm), its HTMX partials, the OAuth callback and amoCRM's disconnect hook."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    get_flashed_messages,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user

from crm_app.auth.access import page_login_required
from crm_app.extensions import csrf, db
from crm_app.logging_setup import mask_secrets
from crm_app.services import connection, stats
from crm_app.services.connection import ConnectError
from crm_app.services.mirror import target_statuses
from crm_app.services.owners import get_owner, list_owners
from crm_app.services.settings import (
    ConfigInvalid,
    parse_config,
    settings_form,
    update_config,
)
from crm_app.services.sync_log import list_log
from crm_app.web.context import request_context
from crm_app.web.respond import (
    action_done,
    page_response,
    respond,
    to_page,
    view_vars,
    wants_fragment,
)

logger = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

F = TypeVar("F", bound=Callable[..., Any])

HTMX_VERSION = "2.0.11"
LOG_PAGE_SIZE = 20
NONCE_KEY = "crm_oauth_nonce"
# Events the panels listen to (documented in docs/connect.md).
EVT_CONNECTION = "crm-connection-changed"
EVT_SETTINGS = "crm-settings-saved"
EVT_STATUS = "crm-status-changed"  # only the badge: e.g. a failed connect put a reason there
# Panels loaded lazily into the page's slots: (DOM id, endpoint).
SLOTS = (
    ("sync-panel", "sync_ui.sync_card"),
    ("webhooks-panel", "webhooks.panel"),
    ("inbound-panel", "inbound.inbound_card"),
    ("chat-channel-panel", "inbox.channel_panel"),
)
# Which override of the whole page a panel's view model is (the page shows that state).
PANEL_KEYS = {
    "_settings_form.html": "settings",
    "_connect_panel.html": "connect",
    "_stats.html": "stats",
    "_sync_log.html": "log",
}
# -- access ---------------------------------------------------------------------------------------


def _session_nonce() -> str:
    """Binds OAuth states to this browser session and user (a new login gets a new nonce)."""
    prefix = f"{current_user.id}:"
    nonce = session.get(NONCE_KEY)
    if not isinstance(nonce, str) or not nonce.startswith(prefix):
        nonce = prefix + secrets.token_urlsafe(24)
        session[NONCE_KEY] = nonce
    return nonce


# -- view models ----------------------------------------------------------------------------------


def _badge_vm(owner_id: int) -> dict[str, Any]:
    st = connection.status(owner_id)
    if st["status"] == "connected":
        kind = "warn" if st["last_error"] else "ok"
    elif st["status"] == "error":
        kind = "error"
    else:
        kind = "off"
    return {"st": st, "badge_kind": kind}


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _settings_vm(
    owner_id: int,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    return view_vars(settings_form(owner_id, values, errors))


def _connect_vm(
    owner_id: int,
    auth_url: str | None = None,
    errors: dict[str, str] | None = None,
    open_private: bool = False,
) -> dict[str, Any]:
    return {
        "st": connection.status(owner_id),
        "auth_url": auth_url,
        "connect_errors": errors or {},
        "open_private": open_private or bool(errors),
    }


def _stats_vm(owner_id: int, pipeline_id: int | None = None) -> dict[str, Any]:
    return {"panel": stats.stats_panel(owner_id, pipeline_id)}


def _log_vm(owner_id: int, page: int = 1) -> dict[str, Any]:
    first = list_log(owner_id, limit=LOG_PAGE_SIZE)
    pages = max(1, math.ceil(first.total / LOG_PAGE_SIZE))
    page = min(max(1, page), pages)
    log = (
        first
        if page == 1
        else list_log(owner_id, limit=LOG_PAGE_SIZE, offset=(page - 1) * LOG_PAGE_SIZE)
    )
    return {"log": log, "log_page": page, "log_pages": pages}


def _account_vm(owner_id: int) -> dict[str, Any]:
    return {"account": connection.account_info(owner_id), "st": connection.status(owner_id)}


def _page_html(**overrides: Any) -> str:
    """The whole page; ``overrides`` replace one panel's view model (errors, a shown auth URL)."""
    ctx = request_context()
    vm: dict[str, Any] = {}
    vm |= _badge_vm(ctx.owner_id)
    vm |= overrides.pop("settings", None) or _settings_vm(ctx.owner_id)
    vm |= overrides.pop("connect", None) or _connect_vm(ctx.owner_id)
    vm |= _account_vm(ctx.owner_id)
    vm |= overrides.pop("stats", None) or _stats_vm(ctx.owner_id)
    vm |= overrides.pop("log", None) or _log_vm(ctx.owner_id)
    return render_template(
        "crm/page.html",
        ctx=ctx,
        owner=get_owner(ctx.owner_id),
        owners=list_owners() if ctx.is_admin else [],
        slots=[(sid, ctx.url(endpoint)) for sid, endpoint in SLOTS],
        **vm,
    )


def full_page(**overrides: Any) -> Callable[[], str]:
    """The CRM page as `respond(page=...)` wants it: rendered only when no fragment is asked."""
    return lambda: _page_html(**overrides)


def _panel(template: str, status: int = 200, **vm: Any) -> Response:
    """One of this page's panels: the partial for htmx, the page with this state otherwise."""
    key = PANEL_KEYS.get(template)
    return respond(
        f"crm/partials/{template}",
        status=status,
        page=full_page(**({key: vm} if key else {})),
        **vm,
    )


# -- the page -------------------------------------------------------------------------------------


@bp.get("/admin/crm")
@page_login_required
def crm_page() -> Response:
    return page_response(_page_html())


@bp.get("/admin/crm/ui/status")
@page_login_required
def status_badge() -> Response:
    ctx = request_context()
    return _panel("_status_badge.html", **_badge_vm(ctx.owner_id))


@bp.get("/admin/crm/ui/account")
@page_login_required
def account_card() -> Response:
    ctx = request_context()
    return _panel("_account_card.html", **_account_vm(ctx.owner_id))


@bp.get("/admin/crm/ui/stats")
@page_login_required
def stats_panel() -> Response:
    ctx = request_context()
    return _panel(
        "_stats.html", **_stats_vm(ctx.owner_id, _int_or_none(request.args.get("pipeline_id")))
    )


@bp.get("/admin/crm/ui/log")
@page_login_required
def sync_log() -> Response:
    ctx = request_context()
    return _panel(
        "_sync_log.html", **_log_vm(ctx.owner_id, _int_or_none(request.args.get("page")) or 1)
    )


# -- settings -------------------------------------------------------------------------------------


def _form_input() -> dict[str, Any]:
    """The settings form as ConfigInput data: an unticked checkbox is simply absent."""
    data: dict[str, Any] = {
        key: request.form.get(key, "")
        for key in (
            "subdomain",
            "domain",
            "client_id",
            "client_secret",
            "redirect_uri",
            "lead_pipeline_id",
            "lead_status_id",
            "lead_responsible_user_id",
        )
    }
    for flag in (
        "sync_contacts",
        "sync_leads",
        "sync_tasks",
        "auto_create_lead",
        "new_deal_when_closed",
    ):
        data[flag] = request.form.get(flag) in ("on", "1", "true", "yes")
    return data


@bp.route("/admin/crm/ui/settings", methods=["GET", "POST"])
@page_login_required
def settings() -> Response:
    if request.method == "GET":
        ctx = request_context()
        return _panel("_settings_form.html", **_settings_vm(ctx.owner_id))
    ctx = request_context(write=True)
    data = _form_input()
    try:
        parsed = parse_config(data)
        before = connection.status(ctx.owner_id)["status"]
        update_config(ctx.owner_id, parsed)
    except ConfigInvalid as exc:
        db.session.rollback()
        vm = _settings_vm(ctx.owner_id, values=data, errors=exc.errors)
        return _panel("_settings_form.html", status=422, **vm)
    after = connection.status(ctx.owner_id)["status"]
    message = _("Настройки сохранены")
    if not wants_fragment():
        return action_done(message)
    return respond(
        "crm/partials/_settings_form.html",
        trigger=EVT_CONNECTION if before != after else EVT_SETTINGS,
        message=message,
        saved=True,
        **_settings_vm(ctx.owner_id),
    )


@bp.get("/admin/crm/ui/settings/statuses")
@page_login_required
def status_options() -> Response:
    """The status <option>s of the chosen pipeline (the dropdown follows the pipeline)."""
    ctx = request_context()
    if not wants_fragment():
        return to_page()
    pipeline_id = _int_or_none(request.args.get("lead_pipeline_id"))
    return respond(
        "crm/partials/_status_options.html",
        statuses=target_statuses(ctx.owner_id, pipeline_id),
        selected=None,
        pipeline_chosen=pipeline_id is not None,
    )


# -- connecting -----------------------------------------------------------------------------------


@bp.get("/admin/crm/ui/connect")
@page_login_required
def connect_panel() -> Response:
    ctx = request_context()
    return _panel("_connect_panel.html", **_connect_vm(ctx.owner_id))


@bp.post("/admin/crm/ui/auth-url")
@page_login_required
def auth_url() -> Response:
    """ "Получить URL авторизации": a fresh consent URL behind the "Подключить amoCRM" button."""
    ctx = request_context(write=True)
    try:
        url = connection.build_auth_url(
            ctx.owner_id, ctx.actor.id, _session_nonce(), mode="post_message"
        )
    except ConnectError as exc:
        vm = _connect_vm(ctx.owner_id, errors={"auth": exc.message})
        return _panel("_connect_panel.html", status=422, **vm)
    return _panel("_connect_panel.html", **_connect_vm(ctx.owner_id, auth_url=url))


def _connect_action(field: str, run: Callable[[int, str], Any], ok_message: str) -> Response:
    ctx = request_context(write=True)
    value = request.form.get(field, "")
    try:
        run(ctx.owner_id, value)
    except ConnectError as exc:
        db.session.rollback()
        vm = _connect_vm(ctx.owner_id, errors={field: exc.message}, open_private=True)
        resp = _panel("_connect_panel.html", status=422, **vm)
        # The badge may now carry the reason (last_error).
        resp.headers["HX-Trigger"] = EVT_STATUS
        return resp
    return action_done(ok_message, event=EVT_CONNECTION)


@bp.post("/admin/crm/ui/code")
@page_login_required
def connect_code() -> Response:
    """A private integration's authorization code, pasted and exchanged at once."""
    return _connect_action("code", connection.connect_with_code, _("amoCRM подключён"))


@bp.post("/admin/crm/ui/token")
@page_login_required
def connect_token() -> Response:
    """A long-lived token, checked against the account and stored."""
    return _connect_action("token", connection.connect_with_long_lived_token, _("amoCRM подключён"))


@bp.post("/admin/crm/ui/disconnect")
@page_login_required
def disconnect() -> Response:
    ctx = request_context(write=True)
    connection.disconnect(ctx.owner_id)
    return action_done(_("amoCRM отключён"), event=EVT_CONNECTION)


@bp.get("/admin/crm/callback")
@page_login_required
def oauth_callback():
    """amoCRM's redirect: state and referer are checked before any request leaves."""
    nonce = session.get(NONCE_KEY)
    try:
        connection.handle_callback(
            request.args, nonce if isinstance(nonce, str) else "", user_id=current_user.id
        )
    except ConnectError as exc:
        db.session.rollback()
        logger.info("OAuth callback refused (%s): %s", exc.status, exc.message)
        return _callback_page(ok=False, reason=exc.message, status=exc.status)
    # PRG: the code never stays in the popup's address bar or history.
    return redirect(url_for(".oauth_done"), code=303)


@bp.get("/admin/crm/callback/done")
@page_login_required
def oauth_done():
    return _callback_page(ok=True, reason=None, status=200)


def _callback_page(ok: bool, reason: str | None, status: int) -> Response:
    resp = make_response(render_template("crm/callback.html", ok=ok, reason=reason), status)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    # The popup must keep its opener to post the result back (a stricter COOP would sever it).
    resp.headers["Cross-Origin-Opener-Policy"] = "unsafe-none"
    return resp


# -- amoCRM's disconnect hook ---------------------------------------------------------------------


@bp.get("/webhooks/amocrm/disconnect")
@csrf.exempt
def disconnect_hook():
    """GET with client_uuid, account_id and an HMAC-SHA256 signature keyed by the client secret."""
    args = request.args
    if not all(args.get(k) for k in ("client_uuid", "account_id", "signature")):
        abort(400, description="client_uuid, account_id and signature are required.")
    if not connection.handle_disconnect_hook(args):
        abort(403, description="Signature does not match any connected integration.")
    return jsonify(status="disconnected")


# -- template helpers -----------------------------------------------------------------------------


def _lang_url(code: str) -> str:
    args = {k: v for k, v in request.args.items() if k != "lang"}
    return request.path + "?" + urlencode({**args, "lang": code})


def _current_lang() -> str:
    locale = get_locale()
    return locale.language if locale is not None else "ru"


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "flashed": lambda: get_flashed_messages(with_categories=True),
        "lang_url": _lang_url,
        "current_lang": _current_lang,
        "htmx_version": HTMX_VERSION,
    }


@bp.app_template_filter("masked")
def _masked(value: Any) -> str:
    """Free text (from amoCRM, error messages), with anything secret-shaped cut out."""
    return mask_secrets(str(value)) if value not in (None, "") else ""


@bp.app_template_filter("dt")
def _format_dt(value: Any) -> str:
    """A UTC timestamp as dd.mm.yyyy HH:MM UTC (crm.js shows it in the browser's time zone)."""
    if value in (None, ""):
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%d.%m.%Y %H:%M UTC")


@bp.app_template_filter("iso")
def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    return str(value or "")
