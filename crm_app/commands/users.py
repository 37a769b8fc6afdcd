"""`flask users create|set-password|deactivate|activate|sign-out-everywhere NAME`."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from crm_app.auth.password_policy import WeakPassword, check_password
from crm_app.auth.passwords import hash_password
from crm_app.extensions import db
from crm_app.models import Owner, Role, User
from crm_app.services import accounts


def get_or_create_owner(name: str) -> Owner:
    owner = db.session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        owner = Owner(name=name)
        db.session.add(owner)
        db.session.flush()
    return owner


def create_user(username: str, password: str, role: str, owner_name: str | None) -> User:
    """Create a user (and its owner when new); raises ValueError on bad input."""
    username = username.strip()
    if not username or len(username) > 80:
        raise ValueError("username must be 1-80 characters")
    check_password(password, username)  # WeakPassword is a ValueError
    if role not in {r.value for r in Role}:
        raise ValueError("role must be admin, user or guest")
    if db.session.scalar(select(User).where(User.username == username)) is not None:
        raise ValueError(f"user {username!r} already exists")
    owner = get_or_create_owner(owner_name or username)
    user = User(username=username, password_hash=hash_password(password), role=role, owner=owner)
    db.session.add(user)
    db.session.commit()
    return user


group = click.Group("users", help="Manage users.")


@group.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.USER.value)
@click.option("--owner", "owner_name", default=None, help="Owner (tenant) name; default: NAME.")
@with_appcontext
def create(name: str, password: str, role: str, owner_name: str | None) -> None:
    """Create a user NAME with a role, belonging to an owner."""
    try:
        user = create_user(name, password, role, owner_name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(
        f"created {user.role} {user.username!r} (owner {user.owner.name!r}, id {user.owner_id})"
    )


def _user(name: str) -> User:
    try:
        return accounts.find_user(name)
    except accounts.UnknownUser as exc:
        raise click.UsageError(str(exc)) from exc


@group.command("set-password")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def set_password(name: str, password: str) -> None:
    """Change NAME's password; every session and API token of NAME ends."""
    user = _user(name)
    try:
        accounts.set_password(user, password)
    except WeakPassword as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"password of {user.username!r} changed; every session of it ended")


@group.command("deactivate")
@click.argument("name")
@with_appcontext
def deactivate(name: str) -> None:
    """Stop NAME from signing in; every session and API token of NAME ends."""
    user = _user(name)
    accounts.set_active(user, False)
    click.echo(f"{user.username!r} deactivated; every session of it ended")


@group.command("activate")
@click.argument("name")
@with_appcontext
def activate(name: str) -> None:
    """Let a deactivated NAME sign in again."""
    user = _user(name)
    accounts.set_active(user, True)
    click.echo(f"{user.username!r} activated")


@group.command("sign-out-everywhere")
@click.argument("name")
@with_appcontext
def sign_out_everywhere(name: str) -> None:
    """End every browser session and API token of NAME (e.g. a lost laptop)."""
    user = _user(name)
    ended = accounts.sign_out_everywhere(user)
    click.echo(f"{user.username!r} signed out everywhere ({ended} browser sessions ended)")
