"""API fixtures: two owners with users of every role, configured settings and mirror rows."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

ROLES = ("admin", "user", "guest")
PASSWORD = "password123"


@dataclass
class World:
    """Owner "acme" (admin, user, guest) and owner "globex" (its own user), with data."""

    own: int
    other: int
    users: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    other_run_id: int = 0
    own_run_id: int = 0

    def header(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role in self.tokens else {}


def seed_owner(owner_id: int, tag: str) -> None:
    """Settings (not connected), a pipeline with statuses, contacts, leads, tasks, a log."""
    from crm_app.extensions import db
    from crm_app.models import (
        AmoConfig,
        Contact,
        Lead,
        Pipeline,
        PipelineStatus,
        SyncLog,
        Task,
    )

    db.session.add(
        AmoConfig(
            owner_id=owner_id,
            subdomain=f"{tag}corp",
            client_id=f"client-{tag}",
            client_secret=f"secret-{tag}-value",
            redirect_uri="http://127.0.0.1:5000/admin/crm/callback",
        )
    )
    db.session.add(
        Pipeline(owner_id=owner_id, id=100 + owner_id, name=f"{tag} sales", is_main=True)
    )
    for sid, name in ((10, "New"), (142, "Won"), (143, "Lost")):
        db.session.add(
            PipelineStatus(
                owner_id=owner_id, pipeline_id=100 + owner_id, id=sid, name=name, sort=sid
            )
        )
    for i in range(1, 4):
        phone = f"+7900123450{i}"
        db.session.add(
            Contact(
                owner_id=owner_id,
                id=1000 * owner_id + i,
                name=f"{tag} contact {i}",
                phone=phone,
                phones=[phone],
                email=f"c{i}@{tag}.example",
                emails=[f"c{i}@{tag}.example"],
                updated_at=1_700_000_000 + i,
                custom_fields_values=[
                    {"field_code": "PHONE", "field_id": 1, "values": [{"value": phone}]},
                    {"field_code": "EMAIL", "field_id": 2, "values": [{"value": f"c{i}@x.io"}]},
                ],
                raw={"_embedded": {"tags": [{"id": 5, "name": "vip"}], "companies": []}},
            )
        )
        db.session.add(
            Lead(
                owner_id=owner_id,
                id=2000 * owner_id + i,
                name=f"{tag} deal {i}",
                price=1000 * i,
                pipeline_id=100 + owner_id,
                status_id=10,
                contact_ids=[1000 * owner_id + i],
                main_contact_id=1000 * owner_id + i,
                updated_at=1_700_000_000 + i,
            )
        )
        db.session.add(
            Task(
                owner_id=owner_id,
                id=3000 * owner_id + i,
                text=f"{tag} call back {i}",
                entity_type="leads",
                entity_id=2000 * owner_id + i,
                complete_till=1_700_100_000,
                updated_at=1_700_000_000 + i,
            )
        )
    now = datetime.now(UTC)
    for i, op in enumerate(("sync_contacts", "sync_leads", "create_lead")):
        db.session.add(
            SyncLog(
                owner_id=owner_id,
                timestamp=now - timedelta(minutes=10 - i),
                operation=op,
                status="success" if i != 2 else "error",
                details={"records": i, "tag": tag},
            )
        )
    db.session.commit()


def mark_connected(*owner_ids: int) -> None:
    """Store a token pair and the connected status, as a finished OAuth exchange leaves them
    (no amoCRM is called: the routes that need a connection only check it exists)."""
    from crm_app.amocrm.tokens import TokenSet
    from crm_app.extensions import db
    from crm_app.models import AmoConfig, ConnectionStatus
    from crm_app.services import tokens as token_store

    for owner_id in owner_ids:
        expires = datetime.now(UTC) + timedelta(hours=1)
        token_store.save_tokens(
            owner_id, TokenSet(f"access-{owner_id}", f"refresh-{owner_id}", expires)
        )
        cfg = db.session.scalar(db.select(AmoConfig).where(AmoConfig.owner_id == owner_id))
        cfg.status = ConnectionStatus.CONNECTED
    db.session.commit()


def add_run(owner_id: int, status: str = "success") -> int:
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    run = SyncRun(owner_id=owner_id, entities=["contacts"], status=status, trigger="api")
    db.session.add(run)
    db.session.commit()
    return run.id


@functools.cache
def _password_hash() -> str:
    # argon2 is slow on purpose; one hash serves every user of every test in this folder.
    from crm_app.auth.passwords import hash_password

    return hash_password(PASSWORD)


def add_user(username: str, role: str, owner_id: int) -> Any:
    from crm_app.extensions import db
    from crm_app.models import User

    user = User(username=username, password_hash=_password_hash(), role=role, owner_id=owner_id)
    db.session.add(user)
    db.session.commit()
    return user


def add_owner(name: str) -> int:
    from crm_app.extensions import db
    from crm_app.models import Owner

    owner = Owner(name=name)
    db.session.add(owner)
    db.session.commit()
    return owner.id


@pytest.fixture
def world(app) -> World:
    """Users admin/user/guest of "acme", "globex_user" of "globex"; Bearer tokens for each."""
    from crm_app.auth.tokens import issue_token

    own, other = add_owner("acme"), add_owner("globex")
    users = {role: add_user(f"acme_{role}", role, own) for role in ROLES}
    users["other_user"] = add_user("globex_user", "user", other)
    w = World(own=own, other=other, users=users)
    seed_owner(own, "acme")
    seed_owner(other, "globex")
    w.own_run_id = add_run(own)
    w.other_run_id = add_run(other)
    with app.test_request_context():
        for role, user in users.items():
            w.tokens[role] = issue_token(user)[0]
    return w
