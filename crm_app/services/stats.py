"""Counts and the lead funnel from the local mirror (no amoCRM call)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import (
    Contact,
    Lead,
    Pipeline,
    PipelineStatus,
    RunStatus,
    SyncCursor,
    SyncRun,
    Task,
)
from crm_app.services.mirror import active_pipelines
from crm_app.services.settings import get_or_create_config

logger = logging.getLogger(__name__)

_COLOR_RE = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")
DEFAULT_COLOR = "#99ccff"


class FunnelStage(NamedTuple):
    """One bar of the funnel: status name, its amoCRM colour and how many leads sit there."""

    name: str
    color: str
    # Shadows tuple.count on purpose: templates and callers read `stage.count`.
    count: int  # type: ignore[assignment]


def _count(model: type[Contact | Lead | Task], owner_id: int) -> int:
    return int(db.session.scalar(select(func.count()).where(model.owner_id == owner_id)) or 0)


def last_sync_at(owner_id: int) -> datetime | None:
    """When a sync last succeeded (cursor high-water marks, else the newest successful run)."""
    cursor = db.session.scalar(
        select(func.max(SyncCursor.last_success_at)).where(SyncCursor.owner_id == owner_id)
    )
    run = db.session.scalar(
        select(func.max(SyncRun.finished_at)).where(
            SyncRun.owner_id == owner_id, SyncRun.status == RunStatus.SUCCESS
        )
    )
    candidates = [v for v in (cursor, run) if v is not None]
    return max(candidates) if candidates else None


def pipeline_counts(owner_id: int) -> list[dict[str, Any]]:
    """Leads per pipeline, pipelines in amoCRM's order (unknown pipeline ids last)."""
    counts = dict(
        db.session.execute(
            select(Lead.pipeline_id, func.count())
            .where(Lead.owner_id == owner_id)
            .group_by(Lead.pipeline_id)
        ).all()
    )
    rows: list[dict[str, Any]] = []
    for p in db.session.scalars(
        select(Pipeline).where(Pipeline.owner_id == owner_id).order_by(Pipeline.sort, Pipeline.id)
    ):
        rows.append(
            {
                "pipeline_id": p.id,
                "name": p.name,
                "is_main": p.is_main,
                "count": int(counts.pop(p.id, 0)),
            }
        )
    for pid, count in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        rows.append({"pipeline_id": pid, "name": None, "is_main": False, "count": int(count)})
    return rows


def get_stats(owner_id: int) -> dict[str, Any]:
    """Mirror counts, the last successful sync and leads per pipeline."""
    last = last_sync_at(owner_id)
    return {
        "contacts_count": _count(Contact, owner_id),
        "leads_count": _count(Lead, owner_id),
        "tasks_count": _count(Task, owner_id),
        "last_sync_at": last.isoformat() if last else None,
        "pipelines": pipeline_counts(owner_id),
    }


def default_pipeline_id(owner_id: int, preferred: int | None = None) -> int | None:
    """The pipeline the funnel shows first: the preferred one, else the main, else the first."""
    if preferred is not None and db.session.get(Pipeline, (owner_id, preferred)) is not None:
        return preferred
    return db.session.scalar(
        select(Pipeline.id)
        .where(Pipeline.owner_id == owner_id)
        .order_by(Pipeline.is_main.desc(), Pipeline.sort, Pipeline.id)
        .limit(1)
    )


def safe_color(value: str | None) -> str:
    """amoCRM status colours are ``#rrggbb``; anything else falls back to a neutral blue."""
    return value if value and _COLOR_RE.fullmatch(value) else DEFAULT_COLOR


def funnel(owner_id: int, pipeline_id: int) -> list[FunnelStage]:
    """Leads per status of one pipeline, in the pipeline's stage order (empty stages included)."""
    counts = dict(
        db.session.execute(
            select(Lead.status_id, func.count())
            .where(Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id)
            .group_by(Lead.status_id)
        ).all()
    )
    stages: list[FunnelStage] = []
    for s in db.session.scalars(
        select(PipelineStatus)
        .where(PipelineStatus.owner_id == owner_id, PipelineStatus.pipeline_id == pipeline_id)
        .order_by(PipelineStatus.sort, PipelineStatus.id)
    ):
        stages.append(FunnelStage(s.name, safe_color(s.color), int(counts.pop(s.id, 0))))
    # Leads in statuses the mirror does not know yet (reference data not synced).
    for status_id, count in sorted(counts.items(), key=lambda kv: kv[0] or 0):
        if status_id is None:
            continue
        stages.append(FunnelStage(f"#{status_id}", DEFAULT_COLOR, int(count)))
    return stages


@dataclass(frozen=True)
class StatsPanel:
    """The statistics card: mirror counts and the funnel of one pipeline."""

    stats: dict[str, Any]
    pipeline_id: int | None
    pipelines: list[Pipeline]
    stages: list[FunnelStage]

    @property
    def top(self) -> int:
        """The largest stage: bars are drawn relative to it."""
        return max((s.count for s in self.stages), default=0)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.stages)


def stats_panel(owner_id: int, pipeline_id: int | None = None) -> StatsPanel:
    """Counts, and the funnel of ``pipeline_id`` (else the settings' pipeline, else the main)."""
    preferred = pipeline_id or get_or_create_config(owner_id).lead_pipeline_id
    chosen = default_pipeline_id(owner_id, preferred)
    return StatsPanel(
        stats=get_stats(owner_id),
        pipeline_id=chosen,
        pipelines=active_pipelines(owner_id),
        stages=funnel(owner_id, chosen) if chosen is not None else [],
    )
