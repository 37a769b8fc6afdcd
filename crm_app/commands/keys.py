"""`flask api-keys create|list|revoke`: keys for the widget backend and the bot."""

from __future__ import annotations

from datetime import datetime

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Owner

group = click.Group("api-keys", help="API keys of the widget backend and the Telegram bot.")


def owner_by_name(name: str) -> Owner:
    owner = db.session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        raise click.UsageError(f"no owner named {name!r}")
    return owner


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


@group.command("create")
@click.option("--owner", "owner_name", required=True, help="Owner (tenant) name.")
@click.option("--name", "label", default="", help="A label, e.g. 'site widget'.")
@with_appcontext
def create(owner_name: str, label: str) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from crm_app.services.inbound.keys import create_api_key

    owner = owner_by_name(owner_name)
    try:
        plain, row = create_api_key(owner.id, label)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(plain)
    click.echo(
        f"created key {row.id} ({row.prefix}…) for owner {owner.name!r}; "
        "it is shown only now, store it in the widget backend or the bot",
        err=True,
    )


@group.command("list")
@click.option("--owner", "owner_name", default=None, help="Only this owner's keys.")
@with_appcontext
def list_keys(owner_name: str | None) -> None:
    """List keys by prefix (the keys themselves are not stored)."""
    from crm_app.models import ApiKey

    query = select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id)
    if owner_name:
        query = query.where(ApiKey.owner_id == owner_by_name(owner_name).id)
    rows = db.session.execute(query.order_by(ApiKey.id)).all()
    if not rows:
        click.echo("no keys")
        return
    click.echo(
        f"{'id':>5}  {'prefix':<14} {'owner':<16} {'name':<20} {'created':<16} {'last used':<16} status"
    )
    for key, owner in rows:
        status = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
        click.echo(
            f"{key.id:>5}  {key.prefix:<14} {owner[:16]:<16} {(key.name or '-')[:20]:<20} "
            f"{_when(key.created_at):<16} {_when(key.last_used_at):<16} {status}"
        )


@group.command("revoke")
@click.argument("key")
@click.option("--owner", "owner_name", default=None, help="Require the key to be this owner's.")
@with_appcontext
def revoke_key(key: str, owner_name: str | None) -> None:
    """Revoke KEY (its id or prefix, as `list` shows); callers using it get 401 at once."""
    from crm_app.services.inbound.keys import find_api_key, revoke

    owner_id = owner_by_name(owner_name).id if owner_name else None
    row = find_api_key(owner_id, key)
    if row is None:
        raise click.UsageError(f"no such key: {key!r} (give the id or the prefix from `list`)")
    if revoke(row):
        click.echo(f"revoked key {row.id} ({row.prefix}…)")
    else:
        click.echo(f"key {row.id} ({row.prefix}…) was already revoked")
