"""The sync card of the CRM page: start buttons and live progress polled from the SyncRun row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, abort, make_response, redirect, render_template, request
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from crm_app.auth.access import (
    OwnerContext,
    owner_context,
    page_login_required,
    require_write,
)
from crm_app.extensions import db, htmx
from crm_app.models import AmoConfig, AmoToken, ConnectionStatus, RunStatus, SyncRun
from crm_app.services.sync import SyncError, start_sync

logger = logging.getLogger(__name__)

bp = Blueprint("sync_ui", __name__)

POLL_SECONDS = 2
STOP_POLLING = 286  # htmx: stop the `every 2s` trigger, still swap this response
EVT_FINISHED = "sync-finished"
ENTITY_LABELS = {"contacts": "Контакты", "leads": "Сделки", "tasks": "Задачи"}

F = TypeVar("F", bound=Callable[..., Any])


def _fragment_wanted() -> bool:
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def _respond(html: str, status: int = 200) -> Response:
    resp = make_response(html, status)
    resp.vary.add("HX-Request")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _connected(owner_id: int) -> bool:
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is None or cfg.status == ConnectionStatus.DISCONNECTED:
        return False
    return db.session.scalar(select(AmoToken.id).where(AmoToken.owner_id == owner_id)) is not None


def run_progress(run: SyncRun) -> dict[str, Any]:
    """What the progress fragment shows: entity, step, pages, records, rate."""
    entities = [e for e in run.entities or [] if e in ENTITY_LABELS]
    checkpoint = run.checkpoint or {}
    done = sum(1 for e in entities if (checkpoint.get(e) or {}).get("done"))
    end = run.finished_at or datetime.now(UTC)
    elapsed = (end - run.started_at).total_seconds() if run.started_at else 0.0
    rate = run.records / elapsed if elapsed > 0 else 0.0
    current = run.current_entity if run.current_entity in ENTITY_LABELS else None
    return {
        "run": run,
        "active": run.status in RunStatus.ACTIVE,
        "entity": ENTITY_LABELS.get(current or "", ""),
        "steps_done": done,
        "steps_total": len(entities),
        "elapsed": elapsed,
        "rate": rate,
        "counts": {
            ENTITY_LABELS[e]: (run.counts or {}).get(e, {}).get("records")
            for e in entities
            if (run.counts or {}).get(e)
        },
    }


def _card_vm(
    view: OwnerContext, message: str | None = None, error: str | None = None
) -> dict[str, Any]:
    runs = db.session.scalars(
        select(SyncRun)
        .where(SyncRun.owner_id == view.owner_id)
        .order_by(SyncRun.id.desc())
        .limit(5)
        .execution_options(populate_existing=True)
    ).all()
    active = next((r for r in runs if r.status in RunStatus.ACTIVE), None)
    last = next((r for r in runs if r.status not in RunStatus.ACTIVE), None)
    return {
        "view": view,
        "connected": _connected(view.owner_id),
        "active": run_progress(active) if active else None,
        "last": run_progress(last) if last else None,
        "message": message,
        "error": error,
        "poll_seconds": POLL_SECONDS,
    }


def _card(view: OwnerContext, status: int = 200, **kwargs: Any) -> Response:
    return _respond(render_template("crm/partials/_sync.html", **_card_vm(view, **kwargs)), status)


def _to_page(view: OwnerContext) -> BaseResponse:
    return redirect(view.url("pages.crm_page"), code=303)


@bp.get("/admin/crm/ui/sync")
@page_login_required
def sync_card():
    """The card (HTMX); a plain browser request goes to the page that embeds it."""
    view = owner_context()
    if not _fragment_wanted():
        return _to_page(view)
    return _card(view)


@bp.post("/admin/crm/ui/sync")
@page_login_required
def start():
    """Синхронизировать / Полная синхронизация: queue a run and show its progress."""
    view = owner_context()
    require_write(view.actor)  # guests: 403
    full = request.form.get("full") in ("1", "true", "on")
    if not _connected(view.owner_id):
        html = render_template(
            "crm/partials/_sync.html",
            **_card_vm(view, error="Сначала подключите аккаунт amoCRM."),
        )
        return _respond(html, 422) if _fragment_wanted() else _to_page(view)
    try:
        run = start_sync(view.owner_id, full=full, trigger="manual")
    except SyncError as exc:
        if not _fragment_wanted():
            return _to_page(view)
        return _card(view, 422, error=str(exc))
    except Exception:
        logger.exception("could not start a sync for owner %s", view.owner_id)
        if not _fragment_wanted():
            return _to_page(view)
        return _card(view, 503, error="Не удалось поставить синхронизацию в очередь.")
    logger.info("owner %s: sync run %s started from the page", view.owner_id, run.id)
    if not _fragment_wanted():
        return _to_page(view)
    return _card(view, message="Синхронизация запущена." if run.status == "queued" else None)


@bp.get("/admin/crm/ui/sync/runs/<int:run_id>")
@page_login_required
def run_status(run_id: int):
    """The progress fragment polled every 2 s; the final one stops polling (286)."""
    view = owner_context()
    run = db.session.get(SyncRun, run_id, populate_existing=True)
    if run is None or run.owner_id != view.owner_id:
        abort(404, description="Not found.")
    progress = run_progress(run)
    html = render_template(
        "crm/partials/_sync_progress.html", view=view, p=progress, poll_seconds=POLL_SECONDS
    )
    if progress["active"]:
        return _respond(html)
    resp = _respond(html, STOP_POLLING)
    resp.headers["HX-Trigger"] = EVT_FINISHED
    return resp
