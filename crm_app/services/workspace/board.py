"""Read models of the deals screens: the board (columns paged by keyset) and the deals table."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, cast, func, or_, select

from crm_app.amocrm.fields import normalize_email, normalize_phone
from crm_app.extensions import db
from crm_app.models import (
    AmoUser,
    Contact,
    Lead,
    OutboxStatus,
    OutboxWrite,
    Pipeline,
    PipelineStatus,
    Task,
)

CLOSED = (142, 143)


@dataclass(frozen=True)
class DealCard:
    """One deal as a board card or a table row."""

    id: int
    name: str
    price: int
    pipeline_id: int | None
    status_id: int | None
    responsible_user_id: int | None
    responsible_name: str | None
    contact_id: int | None
    contact_name: str | None
    created_at: int | None
    updated_at: int | None  # the version a drag or an edit form sends back
    closed_at: int | None
    has_open_task: bool
    pending: bool  # an edit of it waits in the outbox


@dataclass(frozen=True)
class StatusChoice:
    id: int
    name: str
    color: str | None
    sort: int
    type: int  # 1 = unsorted (cannot be set by hand)

    @property
    def closed(self) -> bool:
        return self.id in CLOSED


@dataclass(frozen=True)
class PipelineChoice:
    id: int
    name: str
    is_main: bool
    statuses: list[StatusChoice]


@dataclass(frozen=True)
class Column:
    """One stage of the board: totals of the whole stage and one page of its cards."""

    status: StatusChoice
    count: int
    total_price: int
    cards: list[DealCard]
    next_cursor: str | None  # pass to board_column(after=...) for the next page


@dataclass(frozen=True)
class Board:
    pipeline: PipelineChoice
    pipelines: list[PipelineChoice]
    columns: list[Column]
    version: str  # changes whenever a deal of the pipeline changes (ETag for polling)


def pipelines(owner_id: int) -> list[PipelineChoice]:
    """The owner's pipelines (main first) with their stages in board order."""
    rows = db.session.scalars(
        select(Pipeline)
        .where(Pipeline.owner_id == owner_id, Pipeline.is_archive.is_(False))
        .order_by(Pipeline.is_main.desc(), Pipeline.sort, Pipeline.id)
    ).all()
    statuses: dict[int, list[StatusChoice]] = {}
    for s in db.session.scalars(
        select(PipelineStatus)
        .where(PipelineStatus.owner_id == owner_id)
        .order_by(PipelineStatus.sort, PipelineStatus.id)
    ):
        statuses.setdefault(s.pipeline_id, []).append(
            StatusChoice(s.id, s.name, s.color, s.sort, s.type)
        )
    return [PipelineChoice(p.id, p.name, p.is_main, statuses.get(p.id, [])) for p in rows]


def _encode(updated_at: int | None, lead_id: int) -> str:
    return base64.urlsafe_b64encode(f"{updated_at or 0}:{lead_id}".encode()).decode()


def _decode(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    try:
        stamp, lead_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        return int(stamp), int(lead_id)
    except (ValueError, UnicodeDecodeError):
        return None


def _cards(owner_id: int, leads: list[Lead]) -> list[DealCard]:
    """Cards with the names and markers they show, in three batched queries."""
    if not leads:
        return []
    contact_ids = {lead.main_contact_id for lead in leads if lead.main_contact_id}
    contacts = (
        dict(
            db.session.execute(
                select(Contact.id, Contact.name).where(
                    Contact.owner_id == owner_id, Contact.id.in_(contact_ids)
                )
            ).all()
        )
        if contact_ids
        else {}
    )
    user_ids = {lead.responsible_user_id for lead in leads if lead.responsible_user_id}
    users = (
        dict(
            db.session.execute(
                select(AmoUser.id, AmoUser.name).where(
                    AmoUser.owner_id == owner_id, AmoUser.id.in_(user_ids)
                )
            ).all()
        )
        if user_ids
        else {}
    )
    ids = [lead.id for lead in leads]
    with_tasks = set(
        db.session.scalars(
            select(Task.entity_id).where(
                Task.owner_id == owner_id,
                Task.entity_type == "leads",
                Task.entity_id.in_(ids),
                Task.is_completed.is_(False),
            )
        )
    )
    pending = set(
        db.session.scalars(
            select(OutboxWrite.entity_id).where(
                OutboxWrite.owner_id == owner_id,
                OutboxWrite.entity_type == "leads",
                OutboxWrite.entity_id.in_(ids),
                OutboxWrite.status.in_(OutboxStatus.OPEN),
            )
        )
    )
    return [
        DealCard(
            id=lead.id,
            name=lead.name or "",
            price=lead.price or 0,
            pipeline_id=lead.pipeline_id,
            status_id=lead.status_id,
            responsible_user_id=lead.responsible_user_id,
            responsible_name=users.get(lead.responsible_user_id or 0),
            contact_id=lead.main_contact_id,
            contact_name=contacts.get(lead.main_contact_id or 0),
            created_at=lead.created_at,
            updated_at=lead.updated_at,
            closed_at=lead.closed_at,
            has_open_task=lead.id in with_tasks,
            pending=lead.id in pending,
        )
        for lead in leads
    ]


def _column_page(
    owner_id: int, pipeline_id: int, status_id: int, after: str | None, limit: int
) -> tuple[list[DealCard], str | None]:
    # Newest change first, keyset-paged on (updated_at, id): served by ix_crm_leads_board,
    # as cheap on page 500 as on page 1.
    stmt = select(Lead).where(
        Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id, Lead.status_id == status_id
    )
    position = _decode(after)
    if position is not None:
        stamp, lead_id = position
        stmt = stmt.where(
            or_(Lead.updated_at < stamp, and_(Lead.updated_at == stamp, Lead.id < lead_id))
        )
    rows = list(
        db.session.scalars(stmt.order_by(Lead.updated_at.desc(), Lead.id.desc()).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode(rows[-1].updated_at, rows[-1].id) if more and rows else None
    return _cards(owner_id, rows), cursor


def _totals(owner_id: int, pipeline_id: int) -> dict[int, tuple[int, int]]:
    rows = db.session.execute(
        select(Lead.status_id, func.count(), func.coalesce(func.sum(Lead.price), 0))
        .where(Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id)
        .group_by(Lead.status_id)
    ).all()
    totals: dict[int, tuple[int, int]] = {}
    for status_id, count, total in rows:
        if status_id is not None:
            totals[int(status_id)] = (int(count), int(total or 0))
    return totals


def board_version(owner_id: int, pipeline_id: int) -> str:
    """A cheap fingerprint of the pipeline's deals: newest change and count (an ETag)."""
    newest, count = db.session.execute(
        select(func.max(Lead.updated_at), func.count()).where(
            Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id
        )
    ).one()
    pending = db.session.scalar(
        select(func.count())
        .select_from(OutboxWrite)
        .where(OutboxWrite.owner_id == owner_id, OutboxWrite.status.in_(OutboxStatus.OPEN))
    )
    return f"{pipeline_id}-{newest or 0}-{count}-{pending}"


def board(owner_id: int, pipeline_id: int | None = None, *, per_column: int = 20) -> Board | None:
    """The board of a pipeline (the main one by default): every stage with its count, sum and
    first page of cards. None when the owner has no pipelines mirrored yet."""
    choices = pipelines(owner_id)
    if not choices:
        return None
    pipeline = next((p for p in choices if p.id == pipeline_id), choices[0])
    totals = _totals(owner_id, pipeline.id)
    columns = []
    for status in pipeline.statuses:
        cards, cursor = _column_page(owner_id, pipeline.id, status.id, None, per_column)
        count, total = totals.get(status.id, (0, 0))
        columns.append(Column(status, count, total, cards, cursor))
    return Board(pipeline, choices, columns, board_version(owner_id, pipeline.id))


def board_column(
    owner_id: int, pipeline_id: int, status_id: int, *, after: str | None = None, limit: int = 20
) -> Column | None:
    """One stage's next page of cards (``after`` = the previous page's ``next_cursor``)."""
    status = db.session.get(PipelineStatus, (owner_id, pipeline_id, status_id))
    if status is None:
        return None
    count, total = _totals(owner_id, pipeline_id).get(status_id, (0, 0))
    cards, cursor = _column_page(owner_id, pipeline_id, status_id, after, limit)
    choice = StatusChoice(status.id, status.name, status.color, status.sort, status.type)
    return Column(choice, count, total, cards, cursor)


# -- the deals table ---------------------------------------------------------------------------

SORTS: dict[str, Any] = {
    "updated_at": Lead.updated_at,
    "created_at": Lead.created_at,
    "price": Lead.price,
    "name": Lead.name,
}


@dataclass(frozen=True)
class DealFilter:
    """What the table shows; every field maps to a URL query parameter of the same name."""

    q: str = ""
    pipeline_id: int | None = None
    status_ids: tuple[int, ...] = ()
    responsible_user_id: int | None = None
    created_from: int | None = None
    created_to: int | None = None
    updated_from: int | None = None
    updated_to: int | None = None
    state: str | None = None  # "open" | "closed" | None
    sort: str = "updated_at"
    desc: bool = True
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class DealsPage:
    rows: list[DealCard]
    total: int
    page: int
    per_page: int
    filters: DealFilter = field(default_factory=DealFilter)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search(owner_id: int, q: str) -> Any:
    """Deals whose name or tag matches, or whose contact has that phone or e-mail."""
    conds: list[Any] = [
        Lead.name.ilike(_like(q), escape="\\"),
        cast(Lead.raw["_embedded"]["tags"], String).ilike(_like(q), escape="\\"),
    ]
    if q.isdigit() and len(q) <= 18:
        conds.append(Lead.id == int(q))
    contacts = None
    phone = normalize_phone(q) if sum(ch.isdigit() for ch in q) >= 7 else None
    if phone:
        # The mirror keeps E.164: any way of typing the number finds it (ix_crm_contacts_phone).
        contacts = select(Contact.id).where(Contact.owner_id == owner_id, Contact.phone == phone)
    elif "@" in q:
        email = normalize_email(q) or q.lower()
        contacts = select(Contact.id).where(Contact.owner_id == owner_id, Contact.email == email)
    if contacts is not None:
        conds.append(Lead.main_contact_id.in_(contacts))
    return or_(*conds)


def deals_table(owner_id: int, f: DealFilter) -> DealsPage:
    """One page of the owner's deals under the filters, with the total count."""
    stmt = select(Lead).where(Lead.owner_id == owner_id)
    if f.q.strip():
        stmt = stmt.where(_search(owner_id, f.q.strip()))
    if f.pipeline_id is not None:
        stmt = stmt.where(Lead.pipeline_id == f.pipeline_id)
    if f.status_ids:
        stmt = stmt.where(Lead.status_id.in_(f.status_ids))
    if f.responsible_user_id is not None:
        stmt = stmt.where(Lead.responsible_user_id == f.responsible_user_id)
    for column, low, high in (
        (Lead.created_at, f.created_from, f.created_to),
        (Lead.updated_at, f.updated_from, f.updated_to),
    ):
        if low is not None:
            stmt = stmt.where(column >= low)
        if high is not None:
            stmt = stmt.where(column <= high)
    if f.state == "open":
        stmt = stmt.where(or_(Lead.status_id.is_(None), Lead.status_id.not_in(CLOSED)))
    elif f.state == "closed":
        stmt = stmt.where(Lead.status_id.in_(CLOSED))
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    column = SORTS.get(f.sort, Lead.updated_at)
    order = column.desc().nulls_last() if f.desc else column.asc().nulls_last()
    tie = Lead.id.desc() if f.desc else Lead.id.asc()
    per_page = max(1, min(f.per_page, 200))
    page = max(1, f.page)
    rows = list(
        db.session.scalars(stmt.order_by(order, tie).limit(per_page).offset((page - 1) * per_page))
    )
    return DealsPage(_cards(owner_id, rows), int(total), page, per_page, f)
