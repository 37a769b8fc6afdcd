"""The sync card of the CRM page: start buttons and live progress polled from the SyncRun row."""

from __future__ import annotations

from flask import Blueprint, Response, abort, request
from flask_babel import gettext as _

from crm_app.auth.access import page_login_required
from crm_app.services.connection import is_connected
from crm_app.services.sync.manual import NOT_CONNECTED, QUEUE_DOWN, SyncRefused, request_sync
from crm_app.services.sync.progress import run_progress, sync_card
from crm_app.web.context import request_context
from crm_app.web.respond import respond

bp = Blueprint("sync_ui", __name__)

POLL_SECONDS = 2
EVT_FINISHED = "sync-finished"


def refusal_message(exc: SyncRefused) -> str:
    """Why a sync did not start, in the page's language."""
    if exc.reason == NOT_CONNECTED:
        return _("amoCRM не подключён: сначала подключите аккаунт, затем запускайте синхронизацию.")
    if exc.reason == QUEUE_DOWN:
        return _("Не удалось поставить синхронизацию в очередь. Попробуйте позже.")
    return _("Нечего синхронизировать: в настройках выключены контакты, сделки и задачи.")


def _card(status: int = 200, notice: str | None = None, error: str | None = None) -> Response:
    ctx = request_context()
    return respond(
        "crm/partials/_sync.html",
        status=status,
        title=_("Синхронизация"),
        card=sync_card(ctx.owner_id, connected=is_connected(ctx.owner_id)),
        notice=notice,
        error=error,
        poll_seconds=POLL_SECONDS,
    )


@bp.get("/admin/crm/ui/sync", endpoint="sync_card")
@page_login_required
def sync_card_view() -> Response:
    """The sync card (a browser without htmx gets it on a page of its own)."""
    return _card()


@bp.post("/admin/crm/ui/sync")
@page_login_required
def start() -> Response:
    """Синхронизировать / Полная синхронизация: queue a run and show its progress."""
    ctx = request_context(write=True)
    try:
        run = request_sync(
            ctx.owner_id, trigger="manual", full=request.form.get("full") in ("1", "true", "on")
        )
    except SyncRefused as exc:
        return _card(exc.status, error=refusal_message(exc))
    return _card(notice=_("Синхронизация запущена.") if run.status == "queued" else None)


@bp.get("/admin/crm/ui/sync/runs/<int:run_id>")
@page_login_required
def run_status(run_id: int) -> Response:
    """The progress fragment polled every 2 s; the final one stops polling (286)."""
    ctx = request_context()
    progress = run_progress(ctx.owner_id, run_id)
    if progress is None:
        abort(404, description="Not found.")
    return respond(
        "crm/partials/_sync_progress.html",
        title=_("Синхронизация"),
        p=progress,
        poll_seconds=POLL_SECONDS,
        stop_polling=not progress.active,
        trigger=None if progress.active else EVT_FINISHED,
    )
