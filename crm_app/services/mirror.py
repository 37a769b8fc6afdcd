"""Read models of the local mirror: contacts, leads, tasks, pipelines and amoCRM users."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, String, cast, func, or_, select

from crm_app.amocrm.fields import phone_search_query
from crm_app.extensions import db
from crm_app.models import AmoUser, Contact, Lead, Pipeline, PipelineStatus, Task

T = TypeVar("T")
# The consent page's "Неразобранное" stage (type 1) cannot receive leads created through the API.
UNSORTED_STATUS_TYPE = 1


@dataclass(frozen=True)
class MirrorPage(Generic[T]):
    """One page of a listing, newest change first."""

    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class PipelineView:
    pipeline: Pipeline
    statuses: list[PipelineStatus]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _id_match(model: Any, q: str) -> list[Any]:
    return [model.id == int(q)] if q.isdigit() and len(q) <= 18 else []


def _page(stmt: Select[Any], model: Any, limit: int, offset: int) -> MirrorPage[Any]:
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    order = (model.updated_at.desc().nulls_last(), model.id.desc())
    rows = db.session.scalars(stmt.order_by(*order).limit(limit).offset(offset)).all()
    return MirrorPage(items=list(rows), total=int(total), limit=limit, offset=offset)


def list_contacts(owner_id: int, *, q: str | None, limit: int, offset: int) -> MirrorPage[Contact]:
    """Contacts; `q` matches name, phone (however typed), e-mail or id."""
    stmt = select(Contact).where(Contact.owner_id == owner_id)
    if q:
        pattern = _like(q)
        conds = [
            Contact.name.ilike(pattern, escape="\\"),
            Contact.email.ilike(pattern, escape="\\"),
            *_id_match(Contact, q),
        ]
        # Phones are stored in E.164; the national number matches however it was typed.
        digits = phone_search_query(q) or "".join(ch for ch in q if ch.isdigit())
        if len(digits) >= 5:
            conds.append(cast(Contact.phones, String).like(_like(digits), escape="\\"))
        stmt = stmt.where(or_(*conds))
    return _page(stmt, Contact, limit, offset)


def list_leads(owner_id: int, *, q: str | None, limit: int, offset: int) -> MirrorPage[Lead]:
    """Leads; `q` matches the name or the id."""
    stmt = select(Lead).where(Lead.owner_id == owner_id)
    if q:
        stmt = stmt.where(or_(Lead.name.ilike(_like(q), escape="\\"), *_id_match(Lead, q)))
    return _page(stmt, Lead, limit, offset)


def list_tasks(owner_id: int, *, q: str | None, limit: int, offset: int) -> MirrorPage[Task]:
    """Tasks; `q` matches the text or the id."""
    stmt = select(Task).where(Task.owner_id == owner_id)
    if q:
        stmt = stmt.where(or_(Task.text.ilike(_like(q), escape="\\"), *_id_match(Task, q)))
    return _page(stmt, Task, limit, offset)


def list_pipelines(owner_id: int) -> list[PipelineView]:
    """Every pipeline with its statuses, in amoCRM's order."""
    rows = db.session.scalars(
        select(Pipeline).where(Pipeline.owner_id == owner_id).order_by(Pipeline.sort, Pipeline.id)
    ).all()
    statuses: dict[int, list[PipelineStatus]] = {}
    for st in db.session.scalars(
        select(PipelineStatus)
        .where(PipelineStatus.owner_id == owner_id)
        .order_by(PipelineStatus.sort, PipelineStatus.id)
    ):
        statuses.setdefault(st.pipeline_id, []).append(st)
    return [PipelineView(p, statuses.get(p.id, [])) for p in rows]


def active_pipelines(owner_id: int) -> list[Pipeline]:
    """Pipelines not archived, in amoCRM's order (the settings form and the funnel picker)."""
    return list(
        db.session.scalars(
            select(Pipeline)
            .where(Pipeline.owner_id == owner_id, Pipeline.is_archive.is_(False))
            .order_by(Pipeline.sort, Pipeline.id)
        )
    )


def target_statuses(owner_id: int, pipeline_id: int | None) -> list[PipelineStatus]:
    """The statuses a new lead may be created in (all but "Неразобранное")."""
    if pipeline_id is None:
        return []
    return list(
        db.session.scalars(
            select(PipelineStatus)
            .where(
                PipelineStatus.owner_id == owner_id,
                PipelineStatus.pipeline_id == pipeline_id,
                PipelineStatus.type != UNSORTED_STATUS_TYPE,
            )
            .order_by(PipelineStatus.sort, PipelineStatus.id)
        )
    )


def active_users(owner_id: int) -> list[AmoUser]:
    """The account's active users by name (the responsible-user dropdown)."""
    return list(
        db.session.scalars(
            select(AmoUser)
            .where(AmoUser.owner_id == owner_id, AmoUser.is_active.is_(True))
            .order_by(AmoUser.name)
        )
    )
