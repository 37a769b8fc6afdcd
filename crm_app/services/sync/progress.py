"""Read models of sync runs: the sync card, its progress fragment and the API's run resource."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.models import RunStatus, SyncRun

RECENT_RUNS = 5
ENTITY_LABELS = {
    "contacts": _n("Контакты"),
    "leads": _n("Сделки"),
    "tasks": _n("Задачи"),
    "lead_notes": _n("Примечания сделок"),
    "contact_notes": _n("Примечания контактов"),
}


@dataclass(frozen=True)
class RunView:
    """One sync run as `GET /admin/crm/sync/runs/<id>` returns it."""

    run_id: int
    status: str
    entities: list[str]
    full: bool
    trigger: str
    current_entity: str | None
    pages: int
    records: int
    requests: int
    rate_limited: int
    counts: dict[str, Any]
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class RunProgress:
    """What the progress fragment shows about a run: step, rate, per-entity counts."""

    run: RunView
    active: bool
    entity: str
    steps_done: int
    steps_total: int
    elapsed: float
    rate: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def mode_label(self) -> str:
        """How the run read amoCRM: a run asked for "changes" is full when there was no cursor."""
        modes = {str(c.get("mode")) for c in self.run.counts.values() if isinstance(c, dict)}
        if self.run.full or "full" in modes:
            return _t("полная")
        if "reconcile" in modes:
            return _t("сверка")
        return _t("изменения с прошлого запуска")


@dataclass(frozen=True)
class SyncCard:
    connected: bool
    active: RunProgress | None
    last: RunProgress | None


def run_view(run: SyncRun) -> RunView:
    return RunView(
        run_id=run.id,
        status=run.status,
        entities=list(run.entities or []),
        full=bool(run.full),
        trigger=run.trigger,
        current_entity=run.current_entity,
        pages=run.pages or 0,
        records=run.records or 0,
        requests=run.requests or 0,
        rate_limited=run.rate_limited or 0,
        counts=dict(run.counts or {}),
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def progress(run: SyncRun) -> RunProgress:
    entities = [e for e in run.entities or [] if e in ENTITY_LABELS]
    checkpoint = run.checkpoint or {}
    done = sum(1 for e in entities if (checkpoint.get(e) or {}).get("done"))
    end = run.finished_at or datetime.now(UTC)
    elapsed = (end - run.started_at).total_seconds() if run.started_at else 0.0
    counts = run.counts or {}
    current = run.current_entity if run.current_entity in ENTITY_LABELS else None
    return RunProgress(
        run=run_view(run),
        active=run.status in RunStatus.ACTIVE,
        entity=_t(ENTITY_LABELS[current]) if current else "",
        steps_done=done,
        steps_total=len(entities),
        elapsed=elapsed,
        rate=run.records / elapsed if elapsed > 0 else 0.0,
        counts={
            _t(ENTITY_LABELS[e]): int((counts.get(e) or {}).get("records") or 0)
            for e in entities
            if counts.get(e)
        },
    )


def _run(owner_id: int, run_id: int) -> SyncRun | None:
    # populate_existing: a worker changes the row underneath this session while it is polled.
    run = db.session.get(SyncRun, run_id, populate_existing=True)
    return run if run is not None and run.owner_id == owner_id else None


def find_run(owner_id: int, run_id: int) -> RunView | None:
    """The owner's run, or None (another owner's run is simply not found)."""
    run = _run(owner_id, run_id)
    return run_view(run) if run is not None else None


def run_progress(owner_id: int, run_id: int) -> RunProgress | None:
    run = _run(owner_id, run_id)
    return progress(run) if run is not None else None


def sync_card(owner_id: int, *, connected: bool) -> SyncCard:
    """The running run (if any) and the last finished one."""
    runs = db.session.scalars(
        select(SyncRun)
        .where(SyncRun.owner_id == owner_id)
        .order_by(SyncRun.id.desc())
        .limit(RECENT_RUNS)
        .execution_options(populate_existing=True)
    ).all()
    active = next((r for r in runs if r.status in RunStatus.ACTIVE), None)
    last = next((r for r in runs if r.status not in RunStatus.ACTIVE), None)
    return SyncCard(
        connected=connected,
        active=progress(active) if active else None,
        last=progress(last) if last else None,
    )
