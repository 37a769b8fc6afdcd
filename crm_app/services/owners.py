"""Owners (the tenants of this service) as the page lists them."""

from __future__ import annotations

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Owner


def list_owners() -> list[Owner]:
    """Every owner by name (an admin's owner picker)."""
    return list(db.session.scalars(select(Owner).order_by(Owner.name)))


def get_owner(owner_id: int) -> Owner | None:
    return db.session.get(Owner, owner_id)
