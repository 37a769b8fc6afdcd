"""`flask demo setup`: a demo admin and settings pointing at the local sandbox (make run)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from crm_app.auth.password_policy import WeakPassword, check_password
from crm_app.auth.passwords import hash_password, verify_password
from crm_app.auth.sessions import end_all_sessions
from crm_app.commands.users import get_or_create_owner
from crm_app.extensions import db
from crm_app.models import AmoConfig, Role, User

# Printed by `make run`'s banner; the password policy accepts it (it is not a common password).
DEMO_PASSWORD = "demo-sandbox-42"

group = click.Group("demo", help="Demo set-up for `make run`.")


@group.command("setup")
@click.option("--username", default="admin")
@click.option("--password", default=DEMO_PASSWORD)
@click.option("--subdomain", default="demo")
@click.option("--client-id", default="demo-client-id")
@click.option("--client-secret", default="demo-client-secret")
@with_appcontext
def setup(username: str, password: str, subdomain: str, client_id: str, client_secret: str) -> None:
    """Create (or reset) the demo admin and pre-fill the amoCRM settings for the sandbox."""
    try:
        check_password(password, username)
    except WeakPassword as exc:
        raise click.UsageError(str(exc)) from exc
    owner = get_or_create_owner("demo")
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, role=Role.ADMIN.value, owner=owner, password_hash="")
        db.session.add(user)
    if user.password_hash and not verify_password(user.password_hash, password):
        end_all_sessions(user)  # a reset password ends the sessions signed in with the old one
    user.password_hash = hash_password(password)
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner.id))
    if cfg is None:
        cfg = AmoConfig(
            owner_id=owner.id,
            subdomain=subdomain,
            client_id=client_id,
            client_secret=client_secret,
            sync_contacts=True,
            sync_leads=True,
            sync_tasks=True,
        )
        db.session.add(cfg)
    cfg.redirect_uri = current_app.config["PUBLIC_URL"] + "/admin/crm/callback"
    db.session.commit()
    click.echo(f"demo admin {username!r} ready (owner 'demo', id {owner.id})")
