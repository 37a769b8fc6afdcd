"""The one responder of the web layer: a fragment for htmx, a whole page otherwise, JSON for APIs.

`respond()` renders a partial template with the request context as `ctx`. An htmx request for
a piece (not a boosted navigation, not a history restore) gets the partial alone; any other
request gets a whole page, so every URL also works without JavaScript and as a bookmark. Every
answer carries `Vary: HX-Request` (the same URL has two representations) and `no-store`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, flash, jsonify, make_response, redirect, render_template

from crm_app.extensions import htmx
from crm_app.web.context import request_context

STOP_POLLING = 286  # htmx stops an `every Ns` trigger on this status and still swaps the body
PANEL_PAGE = "crm/panel_page.html"


def is_htmx() -> bool:
    """Any request htmx sent: a slot loading, a poll, a form, a boosted link."""
    return bool(htmx)


def wants_fragment() -> bool:
    """htmx asked for a piece of a page (not a boosted navigation, not a history restore)."""
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def _finish(resp: Response) -> Response:
    resp.vary.add("HX-Request")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _flash_oob(message: str, category: str) -> str:
    return render_template("crm/partials/_flash.html", oob=True, messages=[(category, message)])


def respond(
    template: str,
    *,
    status: int = 200,
    page: Callable[[], str] | None = None,
    title: str | None = None,
    trigger: str | None = None,
    stop_polling: bool = False,
    message: str | None = None,
    category: str = "success",
    **vm: Any,
) -> Response:
    """A partial (`template`, rendered with `ctx` and `vm`) for htmx, a whole page otherwise.

    `page` renders the whole page (HTML); without it the partial is shown on a page of its own
    (`title` heads it). `trigger` is an `HX-Trigger` event for the other panels;
    `stop_polling` answers 286 so a polling element stops; `message` is a flash (out of band
    for htmx, the next page's banner otherwise).
    """
    ctx = request_context()
    if wants_fragment():
        html = render_template(template, ctx=ctx, **vm)
        if message:
            html += _flash_oob(message, category)
        resp = make_response(html, STOP_POLLING if stop_polling else status)
        if trigger:
            resp.headers["HX-Trigger"] = trigger
        return _finish(resp)
    if message:
        flash(message, category)
    if page is not None:
        return _finish(make_response(page(), status))
    panel = render_template(template, ctx=ctx, **vm)
    html = render_template(PANEL_PAGE, ctx=ctx, panel=panel, title=title)
    return _finish(make_response(html, status))


def action_done(message: str, *, event: str | None = None, category: str = "success") -> Response:
    """After a change: htmx gets the flash (out of band) and `event`; a plain form post is
    redirected to the CRM page (303), which shows the flash."""
    if wants_fragment():
        resp = make_response(_flash_oob(message, category))
        resp.headers["HX-Reswap"] = "none"
        if event:
            resp.headers["HX-Trigger"] = event
        return _finish(resp)
    flash(message, category)
    return to_page()


def to_page() -> Response:
    """303 to the CRM page of the owner being looked at."""
    return _finish(make_response(redirect(request_context().url("pages.crm_page"), code=303)))


def as_json(value: Any) -> Any:
    """A read model (dataclasses, lists, mappings of them) as plain JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """JSON for machine callers (API keys, webhooks); read models are serialised by `as_json`."""
    resp = jsonify(as_json(data))
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def page_response(html: str, status: int = 200) -> Response:
    """A whole page rendered by the caller, with the same caching headers as a fragment."""
    return _finish(make_response(html, status))


def view_vars(read_model: Any) -> dict[str, Any]:
    """A read model's fields as template variables (shallow: rows stay objects)."""
    return {f.name: getattr(read_model, f.name) for f in dataclasses.fields(read_model)}
