"""Read models of the deals screens: the board (columns paged by keyset) and the deals table."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, tuple_, union_all

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

# A live refresh renders as many cards per column as the person has loaded, within these
# bounds: a crafted request cannot make one render thousands of cards.
MAX_PER_COLUMN = 200
MAX_BOARD_CARDS = 1000


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


# The columns a card needs: loading whole rows would decode every deal's raw JSON.
CARD_COLUMNS = (
    Lead.id,
    Lead.name,
    Lead.price,
    Lead.pipeline_id,
    Lead.status_id,
    Lead.responsible_user_id,
    Lead.main_contact_id,
    Lead.created_at,
    Lead.updated_at,
    Lead.closed_at,
)


def _cards(owner_id: int, leads: list[Any]) -> list[DealCard]:
    """Cards (from Lead rows or CARD_COLUMNS rows) with their names and markers, in four
    batched queries whatever the number of cards."""
    if not leads:
        return []
    contact_ids = {lead.main_contact_id for lead in leads if lead.main_contact_id}
    contacts: dict[int, str | None] = {}
    if contact_ids:
        contacts = dict(
            db.session.execute(
                select(Contact.id, Contact.name).where(
                    Contact.owner_id == owner_id, Contact.id.in_(contact_ids)
                )
            ).all()
        )
    user_ids = {lead.responsible_user_id for lead in leads if lead.responsible_user_id}
    users: dict[int, str | None] = {}
    if user_ids:
        users = dict(
            db.session.execute(
                select(AmoUser.id, AmoUser.name).where(
                    AmoUser.owner_id == owner_id, AmoUser.id.in_(user_ids)
                )
            ).all()
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


def _page_query(
    owner_id: int, pipeline_id: int, status_id: int, after: str | None, limit: int
) -> Any:
    # Newest change first, keyset-paged on (updated_at, id): served by ix_crm_leads_status,
    # as cheap on page 500 as on page 1.
    stmt = select(*CARD_COLUMNS).where(
        Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id, Lead.status_id == status_id
    )
    position = _decode(after)
    if position is not None:
        stamp, lead_id = position
        # A row-value comparison: the index's (updated_at, id) order, one range scan.
        stmt = stmt.where(tuple_(Lead.updated_at, Lead.id) < tuple_(stamp, lead_id))
    return stmt.order_by(Lead.updated_at.desc(), Lead.id.desc()).limit(limit + 1)


def _split_page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode(rows[-1].updated_at, rows[-1].id) if more and rows else None
    return rows, cursor


def _totals(
    owner_id: int, pipeline_id: int, status_id: int | None = None
) -> dict[int, tuple[int, int, int]]:
    """status → (deals, sum of prices, sum of updated_at).

    The sum of versions changes whenever any deal of the stage changes, even when a change
    lands in the same second as the stage's newest one (a max would miss that)."""
    stmt = select(
        Lead.status_id,
        func.count(),
        func.coalesce(func.sum(Lead.price), 0),
        func.coalesce(func.sum(Lead.updated_at), 0),
    ).where(Lead.owner_id == owner_id, Lead.pipeline_id == pipeline_id)
    if status_id is not None:
        stmt = stmt.where(Lead.status_id == status_id)
    totals: dict[int, tuple[int, int, int]] = {}
    for sid, count, total, newest in db.session.execute(stmt.group_by(Lead.status_id)).all():
        if sid is not None:
            totals[int(sid)] = (int(count), int(total or 0), int(newest or 0))
    return totals


def _pending_count(owner_id: int) -> int:
    return int(
        db.session.scalar(
            select(func.count())
            .select_from(OutboxWrite)
            .where(OutboxWrite.owner_id == owner_id, OutboxWrite.status.in_(OutboxStatus.OPEN))
        )
        or 0
    )


def _version(pipeline_id: int, totals: dict[int, tuple[int, int, int]], pending: int) -> str:
    # Every stage's count, price sum and version sum: a move, an edit, a new deal all show.
    stages = ";".join(f"{sid}:{c}:{p}:{v}" for sid, (c, p, v) in sorted(totals.items()))
    digest = hashlib.blake2b(stages.encode(), digest_size=8).hexdigest()
    return f"{pipeline_id}-{digest}-{pending}"


def board_version(owner_id: int, pipeline_id: int) -> str:
    """A cheap fingerprint of the pipeline's deals: newest change, count, pending edits (an
    ETag for polling: it changes whenever the board would)."""
    return _version(pipeline_id, _totals(owner_id, pipeline_id), _pending_count(owner_id))


def column_limits(
    statuses: list[int], per_column: int, shown: Mapping[int, int] | None
) -> dict[int, int]:
    """How many cards each stage renders: what the person has loaded (``shown``), never less
    than a first page, at most MAX_PER_COLUMN a stage and MAX_BOARD_CARDS in all (stages in
    board order; a stage past the budget gets its first page)."""
    limits: dict[int, int] = {}
    budget = MAX_BOARD_CARDS
    for sid in statuses:
        wanted = min(max(per_column, (shown or {}).get(sid, 0)), MAX_PER_COLUMN)
        limits[sid] = max(per_column, min(wanted, budget))
        budget = max(0, budget - limits[sid])
    return limits


def board(
    owner_id: int,
    pipeline_id: int | None = None,
    *,
    per_column: int = 20,
    shown: Mapping[int, int] | None = None,
) -> Board | None:
    """The board of a pipeline (the main one by default): every stage with its count, sum and
    first page of cards. None when the owner has no pipelines mirrored yet.

    ``shown`` (stage → cards on screen) is a live refresh's: those stages render that many
    cards (see ``column_limits``), so further pages a person loaded stay, and each stage's
    ``next_cursor`` continues after its last rendered card."""
    choices = pipelines(owner_id)
    if not choices:
        return None
    pipeline = next((p for p in choices if p.id == pipeline_id), choices[0])
    totals = _totals(owner_id, pipeline.id)
    statuses = [s for s in pipeline.statuses if totals.get(s.id)]
    limits = column_limits([s.id for s in statuses], per_column, shown)
    pages: dict[int, list[Any]] = {}
    if statuses:
        # Every stage's cards in one round trip (one index range per stage).
        parts: list[Any] = [
            _page_query(owner_id, pipeline.id, s.id, None, limits[s.id]).subquery().select()
            for s in statuses
        ]
        query: Any = parts[0] if len(parts) == 1 else union_all(*parts)
        for row in db.session.execute(query):
            pages.setdefault(int(row.status_id), []).append(row)
    split = {sid: _split_page(rows, limits[sid]) for sid, rows in pages.items()}
    cards = {c.id: c for c in _cards(owner_id, [r for rows, _c in split.values() for r in rows])}
    columns = []
    for status in pipeline.statuses:
        rows, cursor = split.get(status.id, ([], None))
        count, total, _stamps = totals.get(status.id, (0, 0, 0))
        columns.append(Column(status, count, total, [cards[r.id] for r in rows], cursor))
    return Board(
        pipeline, choices, columns, _version(pipeline.id, totals, _pending_count(owner_id))
    )


def board_column(
    owner_id: int,
    pipeline_id: int,
    status_id: int,
    *,
    after: str | None = None,
    limit: int = 20,
    totals: bool = True,
) -> Column | None:
    """One stage's next page of cards (``after`` = the previous page's ``next_cursor``).

    ``totals=False`` skips the stage's count and sum (0 in the answer): a scroll that only
    appends cards does not need them again.
    """
    status = db.session.get(PipelineStatus, (owner_id, pipeline_id, status_id))
    if status is None:
        return None
    count = total = 0
    if totals:
        count, total, _stamps = _totals(owner_id, pipeline_id, status_id).get(status_id, (0, 0, 0))
    rows = list(db.session.execute(_page_query(owner_id, pipeline_id, status_id, after, limit)))
    page, cursor = _split_page(rows, limit)
    choice = StatusChoice(status.id, status.name, status.color, status.sort, status.type)
    return Column(choice, count, total, _cards(owner_id, page), cursor)


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
        Lead.tag_names.ilike(_like(q), escape="\\"),
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
    stmt = select(*CARD_COLUMNS).where(Lead.owner_id == owner_id)
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
    column = SORTS.get(f.sort, Lead.updated_at)
    order = column.desc().nulls_last() if f.desc else column.asc().nulls_last()
    tie = Lead.id.desc() if f.desc else Lead.id.asc()
    per_page = max(1, min(f.per_page, 200))
    page = max(1, f.page)
    # The page and the total in one statement (the count is taken before LIMIT applies).
    counted = stmt.add_columns(func.count().over().label("total_rows"))
    rows = list(
        db.session.execute(
            counted.order_by(order, tie).limit(per_page).offset((page - 1) * per_page)
        )
    )
    if rows:
        total = int(rows[0].total_rows)
    else:  # past the last page: count on its own
        total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    return DealsPage(_cards(owner_id, rows), int(total), page, per_page, f)
