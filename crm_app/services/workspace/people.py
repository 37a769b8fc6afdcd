"""Read model of the contacts table and "who am I" for the tasks list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select

from crm_app.amocrm.fields import normalize_email, normalize_phone
from crm_app.extensions import db
from crm_app.models import AmoConfig, AmoUser, Contact, Lead
from crm_app.services.workspace.board import _like

CONTACT_SORTS = {"updated_at": Contact.updated_at, "name": Contact.name}


@dataclass(frozen=True)
class ContactRow:
    id: int
    name: str
    phones: list[str]
    emails: list[str]
    responsible_name: str | None
    deals: int
    updated_at: int | None


@dataclass(frozen=True)
class ContactsPage:
    rows: list[ContactRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def contacts_table(
    owner_id: int,
    *,
    q: str = "",
    responsible_user_id: int | None = None,
    sort: str = "updated_at",
    desc: bool = True,
    page: int = 1,
    per_page: int = 50,
) -> ContactsPage:
    """One page of the owner's contacts: name (substring), phone (any spelling) or e-mail."""
    stmt = select(Contact).where(Contact.owner_id == owner_id)
    q = q.strip()
    if q:
        conds: list[Any] = [Contact.name.ilike(_like(q), escape="\\")]
        if q.isdigit() and len(q) <= 18:
            conds.append(Contact.id == int(q))
        phone = normalize_phone(q) if sum(ch.isdigit() for ch in q) >= 7 else None
        if phone:
            conds.append(Contact.phone == phone)
        if "@" in q:
            conds.append(Contact.email == (normalize_email(q) or q.lower()))
        stmt = stmt.where(or_(*conds))
    if responsible_user_id is not None:
        stmt = stmt.where(Contact.responsible_user_id == responsible_user_id)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    column = CONTACT_SORTS.get(sort, Contact.updated_at)
    order = column.desc().nulls_last() if desc else column.asc().nulls_last()
    per_page = max(1, min(per_page, 200))
    page = max(1, page)
    rows = list(
        db.session.scalars(
            stmt.order_by(order, Contact.id.desc()).limit(per_page).offset((page - 1) * per_page)
        )
    )
    ids = [c.id for c in rows]
    deals: dict[int, int] = {}
    if ids:
        deals = {
            int(cid or 0): int(n)
            for cid, n in db.session.execute(
                select(Lead.main_contact_id, func.count())
                .where(Lead.owner_id == owner_id, Lead.main_contact_id.in_(ids))
                .group_by(Lead.main_contact_id)
            ).all()
        }
    users = dict(
        db.session.execute(
            select(AmoUser.id, AmoUser.name).where(AmoUser.owner_id == owner_id)
        ).all()
    )
    return ContactsPage(
        [
            ContactRow(
                c.id,
                c.name or "",
                list(c.phones or []),
                list(c.emails or []),
                users.get(c.responsible_user_id or 0),
                deals.get(c.id, 0),
                c.updated_at,
            )
            for c in rows
        ],
        int(total),
        page,
        per_page,
    )


def me(owner_id: int) -> int | None:
    """The amoCRM user the integration is connected as (matched by e-mail): "my" tasks."""
    email = db.session.scalar(select(AmoConfig.user_email).where(AmoConfig.owner_id == owner_id))
    if not email:
        return None
    return db.session.scalar(
        select(AmoUser.id).where(
            AmoUser.owner_id == owner_id, func.lower(AmoUser.email) == email.lower()
        )
    )
