"""Error handlers: problem+json for machine callers, a plain page for browsers; never a 500 leak."""

from __future__ import annotations

import logging
from typing import NoReturn

from flask import Flask, Response, abort, jsonify, render_template, request
from flask_babel import get_locale, lazy_gettext
from flask_babel.speaklater import LazyString
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from werkzeug.exceptions import BadRequest, Conflict, HTTPException, InternalServerError

from crm_app.services.availability import database_unavailable
from crm_app.services.tokens import NotConnected
from crm_app.web.respond import is_htmx

logger = logging.getLogger(__name__)

_MACHINE_PREFIXES = ("/api/", "/webhooks/", "/auth/token", "/admin/crm/", "/healthz", "/readyz")
_HTML_PREFIXES = ("/admin/crm/ui/", "/admin/crm/callback")
# The workspace and the inbox are pages under the machine prefix: a browser that opened one
# gets its error as a page, not as raw problem+json.
_PAGE_BLUEPRINTS = ("workspace", "inbox")


def _prefers_html() -> bool:
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def wants_json() -> bool:
    """Problem+json for API clients, an HTML page for browsers and htmx."""
    path = request.path
    if path.startswith(_HTML_PREFIXES) or is_htmx():
        return False
    if path.startswith(_MACHINE_PREFIXES):
        if request.blueprint in _PAGE_BLUEPRINTS and _prefers_html():
            return False
        # A machine route always answers JSON; an unknown URL under those prefixes (no route
        # matched) is shown as a page to a browser that typed it.
        return request.url_rule is not None or not _prefers_html()
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/html"]


def _page_detail(exc: HTTPException) -> str | None:
    """The detail an HTML error page may show without mixing languages.

    Details written for the page are lazy translations; the API's English details are shown
    only on the English page, and werkzeug's default descriptions never (the page has its own
    text per status).
    """
    detail = exc.description
    if isinstance(detail, LazyString):
        return str(detail)
    if not detail or detail == type(exc).description:
        return None
    locale = get_locale()
    return str(detail) if locale is not None and locale.language == "en" else None


def refuse(status: int, message: str, **params: object) -> NoReturn:
    """abort() with a message written for the page (marked with `_n`): passed on lazily, so the
    error page and the htmx flash show it in the page's language instead of a generic text."""
    abort(status, description=lazy_gettext(message, **params))


def problem(status: int, title: str, detail: str, **extra: object) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    resp = jsonify(body)
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    return resp


def database_unavailable_response(app: Flask) -> Response:
    """503 + Retry-After: problem+json for machines, a page that says what happened for people.

    The page is rendered without the layout and without Flask's context processors: both ask
    who is signed in (Flask-Login loads the user eagerly), which needs the database that is gone.
    """
    from flask_babel import get_locale

    retry_after = int(app.config.get("DB_UNAVAILABLE_RETRY_AFTER", 10))
    logger.warning("database unavailable on %s %s", request.method, request.path)
    if wants_json():
        resp = problem(
            503, "Service Unavailable", "The database is unavailable; try again shortly."
        )
    else:
        locale = get_locale()
        html = app.jinja_env.get_template("unavailable.html").render(
            retry_after=retry_after, lang=locale.language if locale is not None else "ru"
        )
        resp = app.make_response((html, 503))
    resp.headers["Retry-After"] = str(retry_after)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_errorhandlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException) -> Response | tuple[str, int]:
        status = exc.code or 500
        detail = str(exc.description or "")
        extra = getattr(exc, "extra", None) or {}
        if wants_json():
            resp = problem(status, exc.name, detail, **extra)
        else:
            try:
                html = render_template(
                    "error.html", status=status, title=exc.name, detail=_page_detail(exc)
                )
            except Exception as render_error:  # the layout needs the signed-in user's row
                if database_unavailable(render_error):
                    return database_unavailable_response(app)
                raise
            resp = app.make_response((html, status))
        # Keep Allow / Retry-After etc. that werkzeug attaches.
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                resp.headers[key] = value
        return resp

    @app.errorhandler(NotConnected)
    def handle_not_connected(exc: NotConnected) -> Response | tuple[str, int]:
        # An amoCRM call for an owner with no tokens (disconnected, or never connected).
        logger.info("amoCRM call refused on %s %s: not connected", request.method, request.path)
        return handle_http(
            Conflict(lazy_gettext("amoCRM не подключена: сначала подключите аккаунт."))
        )

    @app.errorhandler(DataError)
    def handle_data_error(exc: DataError) -> Response | tuple[str, int]:
        # PostgreSQL cannot store a NUL character in text: whatever carried one (a path, a
        # query, a form or JSON field) is bad input, not our failure.
        if "NUL (0x00)" in str(exc.orig):
            from crm_app.extensions import db

            db.session.rollback()
            logger.info("NUL character refused on %s %s", request.method, request.path)
            return handle_http(BadRequest("NUL characters are not allowed in text."))
        return handle_unexpected(exc)

    @app.errorhandler(RecursionError)
    def handle_recursion(exc: RecursionError) -> Response | tuple[str, int]:
        # json.loads gives up on a deeply nested body with RecursionError, not ValueError, so
        # every view that reads JSON would answer 500 to it; that is bad input, not our bug.
        if request.is_json:
            logger.warning("JSON body nested too deeply on %s %s", request.method, request.path)
            return handle_http(BadRequest("The JSON body is nested too deeply."))
        return handle_unexpected(exc)

    @app.errorhandler(DBAPIError)
    @app.errorhandler(SQLAlchemyTimeoutError)
    def handle_database(exc: Exception) -> Response | tuple[str, int]:
        if not database_unavailable(exc):
            return handle_unexpected(exc)
        return database_unavailable_response(app)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response | tuple[str, int]:
        if database_unavailable(exc):  # a raw driver error (psycopg) outside SQLAlchemy
            return database_unavailable_response(app)
        # The traceback goes to the log (secrets are masked there); the client gets no detail.
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return handle_http(InternalServerError("Internal error; it has been logged."))
