"""The inbox pages: conversations, a thread with delivery marks, the reply box, channel settings.

Live updates are polls with ETag/304: an unchanged list or thread costs one small query and an
empty 304, and no gunicorn thread is held open (a stream per open page would starve the pool).
"""

from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template, request
from flask_babel import gettext as _

from crm_app.amocrm.errors import AmoCRMAPIError
from crm_app.auth.access import page_login_required
from crm_app.i18n import mark as _n
from crm_app.services.chats import messages, read
from crm_app.services.chats.channel import (
    ChannelInvalid,
    ChannelNotReady,
    channel_view,
    connect_channel,
    save_channel,
)
from crm_app.web.context import request_context
from crm_app.web.errors import refuse
from crm_app.web.respond import action_done, is_htmx, respond

bp = Blueprint("inbox", __name__)

MAX_REPLY = 4000


def _not_modified(etag: str) -> Response | None:
    """304 when the poll's If-None-Match still matches; every answer carries the ETag."""
    if etag in request.if_none_match:
        resp = make_response("", 304)
        resp.set_etag(etag)
        return resp
    return None


def _with_etag(resp: Response, etag: str) -> Response:
    # Kept by the browser but revalidated every time: its polls then send If-None-Match.
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


def _page(conversation_id: int | None) -> str:
    ctx = request_context()
    q = request.args.get("q", "")[:100]
    current = read.thread(ctx.owner_id, conversation_id) if conversation_id else None
    return render_template(
        "inbox/page.html",
        ctx=ctx,
        q=q,
        items=read.conversations(ctx.owner_id, q),
        thread=current,
        etag_list=read.version(ctx.owner_id),
    )


@bp.get("/admin/crm/inbox")
@page_login_required
def inbox_page() -> Response:
    ctx = request_context()
    q = request.args.get("q", "")[:100]
    etag = read.version(ctx.owner_id)
    if is_htmx() and (hit := _not_modified(etag)):
        return hit
    resp = respond(
        "inbox/_list.html", page=lambda: _page(None), q=q, items=read.conversations(ctx.owner_id, q)
    )
    return _with_etag(resp, etag)


@bp.get("/admin/crm/inbox/<int(min=1, max=2147483647):conversation_id>")
@page_login_required
def thread_view(conversation_id: int) -> Response:
    ctx = request_context()
    etag = read.version(ctx.owner_id, conversation_id)
    if is_htmx() and (hit := _not_modified(etag)):
        return hit
    current = read.thread(ctx.owner_id, conversation_id)
    if current is None:
        refuse(404, _n("Такого разговора нет."))
    if ctx.can_write and current.conversation.unread:
        messages.mark_read(ctx.owner_id, conversation_id)
    resp = respond("inbox/_thread.html", page=lambda: _page(conversation_id), thread=current)
    return _with_etag(resp, etag)


@bp.post("/admin/crm/inbox/<int(min=1, max=2147483647):conversation_id>/reply")
@page_login_required
def reply(conversation_id: int) -> Response:
    ctx = request_context(write=True)
    text = (request.form.get("text") or "").strip()
    error = None
    if not text:
        error = _("Напишите ответ.")
    elif len(text) > MAX_REPLY:
        error = _("Ответ длиннее %(n)s символов.", n=MAX_REPLY)
    else:
        try:
            messages.record_from_operator(ctx.owner_id, conversation_id, text, ctx.actor.username)
        except LookupError:
            refuse(404, _n("Такого разговора нет."))
    current = read.thread(ctx.owner_id, conversation_id)
    if current is None:
        refuse(404, _n("Такого разговора нет."))
    return respond(
        "inbox/_thread.html",
        status=422 if error else 200,
        page=lambda: _page(conversation_id),
        thread=current,
        error=error,
        draft=text if error else "",
    )


# -- channel settings (Integration section) ---------------------------------------------------------


@bp.get("/admin/crm/ui/chat-channel")
@page_login_required
def channel_panel() -> Response:
    ctx = request_context()
    return respond(
        "inbox/_channel.html", title=_("Чаты amoCRM"), channel=channel_view(ctx.owner_id)
    )


@bp.post("/admin/crm/ui/chat-channel")
@page_login_required
def channel_save() -> Response:
    ctx = request_context(write=True)
    form = {
        k: request.form.get(k, "")
        for k in (
            "channel_id",
            "secret",
            "bot_id",
            "mode",
            "telegram_bot_token",
            "widget_callback_url",
        )
    }
    try:
        save_channel(ctx.owner_id, form)
    except ChannelInvalid as exc:
        return respond(
            "inbox/_channel.html",
            status=422,
            channel=channel_view(ctx.owner_id),
            errors={k: _(v) for k, v in exc.errors.items()},
            form=form,
        )
    try:
        connect_channel(ctx.owner_id)
    except ChannelNotReady as exc:
        return action_done(
            _("Канал сохранён, но не подключён: %(e)s", e=_(str(exc))), category="error"
        )
    except AmoCRMAPIError as exc:  # amoCRM refused or is unreachable: shown, settings kept
        return action_done(
            _("Канал сохранён, но не подключён: %(e)s", e=exc.message[:200]), category="error"
        )
    return action_done(_("Канал подключён."), event="chat-channel-changed")
