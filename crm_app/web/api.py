"""The JSON API under /admin/crm/* (Bearer JWT or browser session), its OpenAPI document and docs."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from typing import cast as typed_cast

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    session,
)
from markupsafe import Markup, escape
from spectree import Response as Responses
from werkzeug.http import HTTP_STATUS_CODES

from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMConfigError,
    AmoCRMRateLimited,
    AmoCRMTokenExpired,
)
from crm_app.auth.access import (
    authenticate,
    via_bearer,
)
from crm_app.extensions import csrf
from crm_app.models import User
from crm_app.schemas import API_SECURITY, OPTIONAL_BODY, openapi_document, spec
from crm_app.schemas.common import EmptyBody, ListQuery, OwnerQuery, Problem
from crm_app.schemas.config import (
    AccountOut,
    AuthUrlOut,
    AuthUrlQuery,
    ConfigOut,
    ConfigUpdate,
    DisconnectOut,
    StatusOut,
)
from crm_app.schemas.entities import (
    ContactsPage,
    LeadsPage,
    PipelinesPage,
    TasksPage,
    contact_out,
    lead_out,
    pipeline_out,
    task_out,
)
from crm_app.schemas.openapi import schema_type
from crm_app.schemas.sync import (
    StatsOut,
    SyncLogPage,
    SyncLogQuery,
    SyncRequest,
    SyncRunOut,
)
from crm_app.services import connection, settings
from crm_app.services.amo import NotConfigured
from crm_app.services.connection import ConnectError
from crm_app.services.mirror import (
    MirrorPage,
    list_contacts,
    list_leads,
    list_pipelines,
    list_tasks,
)
from crm_app.services.settings import ConfigInvalid
from crm_app.services.stats import get_stats
from crm_app.services.sync.manual import NOT_CONNECTED, QUEUE_DOWN, SyncRefused, request_sync
from crm_app.services.sync.progress import find_run
from crm_app.services.sync_log import list_log
from crm_app.web.context import request_context
from crm_app.web.errors import problem
from crm_app.web.respond import as_json

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)
# Bearer callers carry no cookie an attacker could ride on; session callers are checked by
# the guard below, which runs CSRF validation itself for every state-changing request.
csrf.exempt(bp)

F = TypeVar("F", bound=Callable[..., Any])
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_MAX_BODY = 64 * 1024

# Error statuses an operation can answer, listed in the document: every operation can meet a
# bad owner_id (400), no credentials (401), another owner (404) and a schema error (422).
_BASE_ERRORS = (400, 401, 404, 422)
_WRITE_ERRORS = (403,)  # guests
_BODY_ERRORS = (413, 415)  # too large; not JSON
_AMO_ERRORS = (409, 502, 503)  # not configured; amoCRM failed; amoCRM rate limit


# -- the guard every operation runs through ------------------------------------------------------


def _read_json_body() -> None:
    """Make sure a non-empty body is a JSON object of bounded size before validation sees it."""
    raw = request.get_data(cache=True)  # raises 413 past the per-request limit
    if not raw.strip():
        return
    if not request.is_json:
        abort(415, description="Send the request body as application/json.")
    try:
        data = request.get_json()
    except RecursionError:
        abort(400, description="The request body is nested too deeply.")
    if not isinstance(data, dict):
        abort(422, description="The request body must be a JSON object.")


def _guard(view: F, *, write: bool) -> F:
    """401 → CSRF (session writes) → owner scope (404) → role (403) → body checks."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request.max_content_length = int(current_app.config.get("API_MAX_BODY", DEFAULT_MAX_BODY))
        authenticate()
        unsafe = request.method not in _SAFE_METHODS
        if unsafe and not via_bearer():
            # A cookie rides along on cross-site requests; only our own pages know the token.
            csrf.protect()
        request_context(write=write)  # owner scope (400/404), then role (403)
        if unsafe:
            _read_json_body()
        return view(*args, **kwargs)

    return typed_cast(F, wrapper)


def operation(
    response: type,
    *,
    status: int = 200,
    tags: tuple[str, ...],
    write: bool = False,
    body: bool = False,
    amo: bool = False,
    optional_body: bool = False,
    also: dict[int, type] | None = None,
) -> Callable[[F], F]:
    """Declare an API operation: its schemas (validated by SpecTree), roles and error codes.

    `write`: Admin and User only (Guest → 403). `body`: takes a JSON body. `amo`: may call
    amoCRM. `also`: more documented answers, status → model. The view's `query` / `json` annotations name its request models; its return value
    is validated against `response` and serialised by it (ISO dates, `_embedded`).
    """
    codes = set(_BASE_ERRORS)
    codes.update(_WRITE_ERRORS if write else ())
    codes.update(_BODY_ERRORS if body else ())
    codes.update(_AMO_ERRORS if amo else ())
    models: dict[str, Any] = {f"HTTP_{status}": response}
    models.update({f"HTTP_{code}": Problem for code in sorted(codes)})
    # Other answers an operation documents (202 pending, a 409 with both versions).
    models.update({f"HTTP_{code}": model for code, model in (also or {}).items()})

    def decorate(view: F) -> F:
        if optional_body:
            OPTIONAL_BODY.add(view.__name__)
        validated = spec.validate(
            resp=Responses(**models),
            tags=tags,
            security=API_SECURITY,
            operation_id=view.__name__,
            force_resp_serialize=True,
        )(view)
        return _guard(validated, write=write)

    return decorate


def _owner_id() -> int:
    return request_context().owner_id


def _actor() -> User:
    return request_context().actor


# -- failures of the services and of amoCRM ------------------------------------------------------


@bp.errorhandler(AmoCRMConfigError)
def _config_error(exc: AmoCRMConfigError) -> Response:
    return problem(422, "Unprocessable Content", str(exc))


@bp.errorhandler(AmoCRMAuthError)
def _auth_error(exc: AmoCRMAuthError) -> Response:
    hint = f" ({exc.hint})" if exc.hint else ""
    return problem(502, "Bad Gateway", f"amoCRM refused the authorization{hint}.")


@bp.errorhandler(AmoCRMTokenExpired)
def _token_error(exc: AmoCRMTokenExpired) -> Response:
    return problem(502, "Bad Gateway", "amoCRM rejected our token; connect the account again.")


@bp.errorhandler(AmoCRMRateLimited)
def _rate_limited(exc: AmoCRMRateLimited) -> Response:
    resp = problem(503, "Service Unavailable", "amoCRM is rate limiting us; try again later.")
    if exc.retry_after:
        resp.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return resp


@bp.errorhandler(AmoCRMAPIError)
def _amo_error(exc: AmoCRMAPIError) -> Response:
    # The message is already scrubbed of tokens by the client.
    logger.warning("amoCRM call failed on %s: %s", request.path, exc.message)
    return problem(502, "Bad Gateway", f"amoCRM request failed: {exc.message}")


@bp.errorhandler(ConfigInvalid)
def _config_invalid(exc: ConfigInvalid) -> Response:
    errors = [
        {
            "in": "body",
            "loc": [] if field == "__all__" else [field],
            "msg": msg,
            "type": "value_error",
        }
        for field, msg in exc.errors.items()
    ]
    return problem(422, "Unprocessable Content", f"Invalid settings: {exc}", errors=errors)


@bp.errorhandler(ConnectError)
def _connect_error(exc: ConnectError) -> Response:
    status = exc.status if exc.status in (400, 409, 502, 503) else 400
    return problem(status, HTTP_STATUS_CODES.get(status, "Error"), exc.message)


@bp.errorhandler(NotConfigured)
def _not_configured(exc: NotConfigured) -> Response:
    return problem(409, "Conflict", f"Fill in the amoCRM settings first ({exc}).")


# -- connection: config, auth-url, status, disconnect, account ----------------------------------


def _config_out(owner_id: int, actor: User) -> dict[str, Any]:
    cfg = settings.get_or_create_config(owner_id)
    hook: str | None = None
    if actor.can_write:
        # The URL carries the webhook secret: shown to those who may configure amoCRM.
        from crm_app.services.webhooks.subscription import webhook_url

        hook = webhook_url(owner_id)
    return settings.config_values(cfg) | {"webhook_url": hook, "status": cfg.status}


@bp.get("/admin/crm/config")
@operation(ConfigOut, tags=("connection",))
def get_config(query: OwnerQuery) -> dict[str, Any]:
    """Read the settings (no secrets: `client_secret_set` tells whether one is stored)."""
    return _config_out(_owner_id(), _actor())


@bp.put("/admin/crm/config")
@operation(ConfigOut, tags=("connection",), write=True, body=True, amo=True)
def put_config(query: OwnerQuery, json: ConfigUpdate) -> dict[str, Any]:
    """Change the settings; `authorization_code` or `long_lived_token` also connects at once.

    Only the fields sent change (an empty `client_secret` keeps the stored one). Unknown fields
    such as `owner_id`, `role` or token fields are rejected with 422 and change nothing.
    """
    owner_id = _owner_id()
    sent = json.settings()
    if sent:
        current = settings.config_values(settings.get_or_create_config(owner_id))
        # The service validates the whole settings object (lead target, responsible user...).
        settings.update_config(owner_id, settings.parse_config(current | sent))
    if json.authorization_code is not None:
        connection.connect_with_code(owner_id, json.authorization_code)
    elif json.long_lived_token is not None:
        connection.connect_with_long_lived_token(owner_id, json.long_lived_token)
    logger.info("owner %s settings changed by user %s via the API", owner_id, _actor().id)
    return _config_out(owner_id, _actor())


def _oauth_nonce(actor: User) -> str:
    """What the OAuth state is bound to.

    A browser session gets the per-session nonce the CRM page uses, so the callback in that
    browser accepts the state. A Bearer client has no session: its state is bound to the user
    (`connection.api_nonce`), and the callback accepts it from a browser signed in as that user.
    """
    if via_bearer():
        return connection.api_nonce(actor.id)
    from crm_app.web.pages import NONCE_KEY

    prefix = f"{actor.id}:"
    nonce = session.get(NONCE_KEY)
    if not isinstance(nonce, str) or not nonce.startswith(prefix):
        nonce = prefix + secrets.token_urlsafe(24)
        session[NONCE_KEY] = nonce
    return nonce


@bp.get("/admin/crm/auth-url")
@operation(AuthUrlOut, tags=("connection",), write=True, amo=True)
def auth_url(query: AuthUrlQuery) -> dict[str, Any]:
    """amoCRM's consent page URL with client_id, a fresh single-use `state` and `mode`.

    Connecting is a change, so guests get 403.
    """
    actor = _actor()
    url = connection.build_auth_url(_owner_id(), actor.id, _oauth_nonce(actor), query.mode)
    return {"url": url}


@bp.get("/admin/crm/status")
@operation(StatusOut, tags=("connection",))
def status(query: OwnerQuery) -> dict[str, Any]:
    """Connection status: connected, disconnected or error (with the last error)."""
    return dict(connection.status(_owner_id()))


@bp.post("/admin/crm/disconnect")
@operation(DisconnectOut, tags=("connection",), write=True, body=True, amo=True, optional_body=True)
def disconnect(query: OwnerQuery, json: EmptyBody) -> dict[str, Any]:
    """Forget the tokens and unsubscribe the webhooks."""
    connection.disconnect(_owner_id())
    logger.info("owner %s disconnected by user %s", _owner_id(), _actor().id)
    return dict(connection.status(_owner_id()))


@bp.get("/admin/crm/account")
@operation(AccountOut, tags=("connection",))
def account(query: OwnerQuery) -> dict[str, Any]:
    """The connected amoCRM account and the user who granted access."""
    return dict(connection.account_info(_owner_id()))


# -- the local mirror ---------------------------------------------------------------------------


def _listing(key: str, items: list[Any], page: MirrorPage[Any]) -> dict[str, Any]:
    """amoCRM's `_embedded` shape plus our paging fields."""
    return {
        "_embedded": {key: items},
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
    }


@bp.get("/admin/crm/contacts")
@operation(ContactsPage, tags=("mirror",))
def contacts(query: ListQuery) -> dict[str, Any]:
    """Contacts from the local mirror; `q` matches name, phone, e-mail or id."""
    page = list_contacts(_owner_id(), q=query.q, limit=query.limit, offset=query.offset)
    return _listing("contacts", [contact_out(r) for r in page.items], page)


@bp.get("/admin/crm/leads")
@operation(LeadsPage, tags=("mirror",))
def leads(query: ListQuery) -> dict[str, Any]:
    """Leads from the local mirror; `q` matches the name or the id."""
    page = list_leads(_owner_id(), q=query.q, limit=query.limit, offset=query.offset)
    return _listing("leads", [lead_out(r) for r in page.items], page)


@bp.get("/admin/crm/tasks")
@operation(TasksPage, tags=("mirror",))
def tasks(query: ListQuery) -> dict[str, Any]:
    """Tasks from the local mirror; `q` matches the text or the id."""
    page = list_tasks(_owner_id(), q=query.q, limit=query.limit, offset=query.offset)
    return _listing("tasks", [task_out(r) for r in page.items], page)


@bp.get("/admin/crm/pipelines")
@operation(PipelinesPage, tags=("mirror",))
def pipelines(query: OwnerQuery) -> dict[str, Any]:
    """Pipelines with their statuses, in amoCRM's order."""
    views = list_pipelines(_owner_id())
    return {
        "_embedded": {"pipelines": [pipeline_out(v.pipeline, v.statuses) for v in views]},
        "total": len(views),
    }


# -- sync, log, stats ---------------------------------------------------------------------------


@bp.post("/admin/crm/sync")
@operation(
    SyncRunOut, status=202, tags=("sync",), write=True, body=True, amo=True, optional_body=True
)
def start_sync(query: OwnerQuery, json: SyncRequest) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a sync (or return the one already running): 202 with its `run_id`.

    While amoCRM is not connected the answer is 409 and no run is queued.
    """
    try:
        run = request_sync(_owner_id(), entities=json.entities, full=json.full, trigger="api")
    except SyncRefused as exc:
        abort(exc.status, description=_REFUSALS.get(exc.reason, exc.detail))
    location = f"/admin/crm/sync/runs/{run.run_id}"
    return as_json(run), 202, {"Location": location}


_REFUSALS = {
    NOT_CONNECTED: "amoCRM is not connected: connect the account before starting a sync.",
    QUEUE_DOWN: "The task queue is unavailable; the sync was not started.",
}


@bp.get("/admin/crm/sync/runs/<int(min=1, max=2147483647):run_id>")
@operation(SyncRunOut, tags=("sync",))
def sync_run(run_id: int, query: OwnerQuery) -> dict[str, Any]:
    """Progress of one sync run (poll it after POST /admin/crm/sync)."""
    run = find_run(_owner_id(), run_id)
    if run is None:
        abort(404, description="No such sync run.")
    return as_json(run)


@bp.get("/admin/crm/sync/log")
@operation(SyncLogPage, tags=("sync",))
def sync_log(query: SyncLogQuery) -> dict[str, Any]:
    """The sync log, newest first."""
    page = list_log(
        _owner_id(),
        limit=query.limit,
        offset=query.offset,
        operation=query.operation,
        status=query.status,
    )
    return as_json(page)  # the raw details (secrets masked); the page shows a summary


@bp.get("/admin/crm/stats")
@operation(StatsOut, tags=("sync",))
def stats(query: OwnerQuery) -> dict[str, Any]:
    """Counts in the local mirror and the time of the last successful sync."""
    return dict(get_stats(_owner_id()))


# -- the document and its page ------------------------------------------------------------------


@bp.get("/api/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document (public: it describes, it holds no data)."""
    return jsonify(openapi_document())


@bp.get("/api/docs")
def api_docs() -> str:
    """A server-rendered reference of the operations and schemas (no script, no CDN)."""
    doc = openapi_document()
    operations = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            operations.append({"path": path, "method": method.upper(), **op})
    schemas = doc.get("components", {}).get("schemas", {})
    return render_template(
        "api/docs.html",
        doc=doc,
        operations=operations,
        schemas=schemas,
        schema_type=schema_type,
        md=_inline_markdown,
    )


_CODE_RE = re.compile(r"`([^`]+)`")
_BOLD_RE = re.compile(r"\*\*([^*]+)\*\*")


def _inline_markdown(text: str | None) -> Markup:
    """`code` and **bold** of the docstrings, after escaping everything else."""
    html = str(escape(text or ""))
    html = _CODE_RE.sub(r"<code>\1</code>", html)
    return Markup(_BOLD_RE.sub(r"<strong>\1</strong>", html))
