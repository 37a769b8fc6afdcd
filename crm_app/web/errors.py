"""Error handlers: problem+json for machine callers, a plain page for browsers; never a 500 leak."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_babel import get_locale
from flask_babel.speaklater import LazyString
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError

from crm_app.web.respond import is_htmx

logger = logging.getLogger(__name__)

_MACHINE_PREFIXES = ("/api/", "/webhooks/", "/auth/token", "/admin/crm/", "/healthz", "/readyz")
_HTML_PREFIXES = ("/admin/crm/ui/", "/admin/crm/callback")


def _prefers_html() -> bool:
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def wants_json() -> bool:
    """Problem+json for API clients, an HTML page for browsers and htmx."""
    path = request.path
    if path.startswith(_HTML_PREFIXES) or is_htmx():
        return False
    if path.startswith(_MACHINE_PREFIXES):
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


def problem(status: int, title: str, detail: str, **extra: object) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    resp = jsonify(body)
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    return resp


def init_errorhandlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException) -> Response | tuple[str, int]:
        status = exc.code or 500
        detail = exc.description or ""
        extra = getattr(exc, "extra", None) or {}
        if wants_json():
            resp = problem(status, exc.name, detail, **extra)
        else:
            html = render_template(
                "error.html", status=status, title=exc.name, detail=_page_detail(exc)
            )
            resp = app.make_response((html, status))
        # Keep Allow / Retry-After etc. that werkzeug attaches.
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                resp.headers[key] = value
        return resp

    @app.errorhandler(RecursionError)
    def handle_recursion(exc: RecursionError) -> Response | tuple[str, int]:
        # json.loads gives up on a deeply nested body with RecursionError, not ValueError, so
        # every view that reads JSON would answer 500 to it; that is bad input, not our bug.
        if request.is_json:
            logger.warning("JSON body nested too deeply on %s %s", request.method, request.path)
            return handle_http(BadRequest("The JSON body is nested too deeply."))
        return handle_unexpected(exc)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response | tuple[str, int]:
        # The traceback goes to the log (secrets are masked there); the client gets no detail.
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return handle_http(InternalServerError("Internal error; it has been logged."))
