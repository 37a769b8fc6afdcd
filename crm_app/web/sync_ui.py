"""The sync card of the CRM page: start buttons and live progress polled from the SyncRun row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, abort, request
from flask_babel import gettext as _
from sqlalchemy import select

from crm_app.auth.access import page_login_required
from crm_app.extensions import db
from crm_app.models import AmoConfig, AmoToken, ConnectionStatus, RunStatus, SyncRun
from crm_app.services.sync import SyncError, start_sync
from crm_app.web.context import request_context
from crm_app.web.respond import respond

logger = logging.getLogger(__name__)

bp = Blueprint("sync_ui", __name__)

POLL_SECONDS = 2
EVT_FINISHED = "sync-finished"
ENTITY_LABELS = {
    "contacts": "Контакты",
    "leads": "Сделки",
    "tasks": "Задачи",
    "lead_notes": "Примечания сделок",
    "contact_notes": "Примечания контактов",
}

F = TypeVar("F", bound=Callable[..., Any])


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


def _card_vm(owner_id: int) -> dict[str, Any]:
    runs = db.session.scalars(
        select(SyncRun)
        .where(SyncRun.owner_id == owner_id)
        .order_by(SyncRun.id.desc())
        .limit(5)
        .execution_options(populate_existing=True)
    ).all()
    active = next((r for r in runs if r.status in RunStatus.ACTIVE), None)
    last = next((r for r in runs if r.status not in RunStatus.ACTIVE), None)
    return {
        "connected": _connected(owner_id),
        "active": run_progress(active) if active else None,
        "last": run_progress(last) if last else None,
        "poll_seconds": POLL_SECONDS,
    }


def _card(status: int = 200, message: str | None = None, error: str | None = None) -> Response:
    ctx = request_context()
    return respond(
        "crm/partials/_sync.html",
        status=status,
        title=_("Синхронизация"),
        message_text=message,
        error=error,
        **_card_vm(ctx.owner_id),
    )


@bp.get("/admin/crm/ui/sync")
@page_login_required
def sync_card() -> Response:
    """The sync card (for htmx; a browser gets it on a page of its own)."""
    return _card()


@bp.post("/admin/crm/ui/sync")
@page_login_required
def start() -> Response:
    """Синхронизировать / Полная синхронизация: queue a run and show its progress."""
    ctx = request_context(write=True)
    full = request.form.get("full") in ("1", "true", "on")
    if not _connected(ctx.owner_id):
        return _card(409, error=_("Сначала подключите аккаунт amoCRM."))
    try:
        run = start_sync(ctx.owner_id, full=full, trigger="manual")
    except SyncError as exc:
        return _card(409, error=str(exc))
    except Exception:
        logger.exception("could not start a sync for owner %s", ctx.owner_id)
        return _card(503, error=_("Не удалось поставить синхронизацию в очередь."))
    logger.info("owner %s: sync run %s started from the page", ctx.owner_id, run.id)
    return _card(message=_("Синхронизация запущена.") if run.status == "queued" else None)


@bp.get("/admin/crm/ui/sync/runs/<int:run_id>")
@page_login_required
def run_status(run_id: int) -> Response:
    """The progress fragment polled every 2 s; the final one stops polling (286)."""
    ctx = request_context()
    run = db.session.get(SyncRun, run_id, populate_existing=True)
    if run is None or run.owner_id != ctx.owner_id:
        abort(404, description="Not found.")
    progress = run_progress(run)
    return respond(
        "crm/partials/_sync_progress.html",
        title=_("Синхронизация"),
        p=progress,
        poll_seconds=POLL_SECONDS,
        stop_polling=not progress["active"],
        trigger=None if progress["active"] else EVT_FINISHED,
    )
