"""Workspace writes against the sandbox: one request, version check, outbox, field errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import (
    Contact,
    Lead,
    LossReason,
    Note,
    OutboxStatus,
    OutboxWrite,
    PipelineStatus,
    Task,
)
from crm_app.services.workspace import (
    Applied,
    Conflict,
    Invalid,
    NotFound,
    Pending,
    add_note,
    create_lead,
    create_task,
    outbox,
    update_contact,
    update_lead,
    update_task,
)
from tests.workspace.conftest import Owner, fault, heal


def _lead(owner: Owner, index: int = 0) -> Lead:
    db.session.expire_all()
    ids = owner.ids("leads")
    row = db.session.get(Lead, (owner.id, ids[index]))
    assert row is not None
    return row


def _other_status(owner: Owner, lead: Lead) -> int:
    return db.session.scalar(
        select(PipelineStatus.id).where(
            PipelineStatus.owner_id == owner.id,
            PipelineStatus.pipeline_id == lead.pipeline_id,
            PipelineStatus.type == 0,
            PipelineStatus.id.not_in([lead.status_id, 142, 143]),
        )
    )


def _writes(owner: Owner) -> list[dict[str, Any]]:
    return [r for r in owner.api_requests() if r["method"] in ("PATCH", "POST")]


def test_status_change_is_one_patch_and_lands_in_the_mirror(synced: Owner, kicks) -> None:
    lead = _lead(synced)
    target = _other_status(synced, lead)
    outcome = update_lead(synced.id, lead.id, {"status_id": target}, lead.updated_at)
    assert isinstance(outcome, Applied), outcome
    assert outcome.entity["status_id"] == target
    calls = synced.api_requests()
    assert [(c["method"], c["path"]) for c in calls] == [("PATCH", f"/api/v4/leads/{lead.id}")]
    assert calls[0]["json"] == {"status_id": target, "pipeline_id": lead.pipeline_id}
    record = synced.record("leads", lead.id)
    mirrored = _lead(synced)
    assert (mirrored.status_id, mirrored.updated_at) == (target, record["updated_at"])


def test_stale_version_is_a_conflict_and_sends_nothing(synced: Owner, kicks) -> None:
    lead = _lead(synced, 1)
    outcome = update_lead(synced.id, lead.id, {"price": 1}, (lead.updated_at or 0) - 10)
    assert isinstance(outcome, Conflict)
    assert outcome.theirs["price"] == lead.price and outcome.yours["price"] == 1
    assert synced.api_requests() == []


def test_field_errors_name_the_field(synced: Owner, kicks) -> None:
    lead = _lead(synced, 2)
    # Checked against the mirror first: no request for a stage of another pipeline.
    other = db.session.scalar(
        select(PipelineStatus.id).where(
            PipelineStatus.owner_id == synced.id,
            PipelineStatus.pipeline_id != lead.pipeline_id,
            PipelineStatus.type == 0,
            PipelineStatus.id.not_in([142, 143]),
        )
    )
    bad = update_lead(
        synced.id, lead.id, {"status_id": other, "pipeline_id": lead.pipeline_id}, lead.updated_at
    )
    assert isinstance(bad, Invalid) and set(bad.fields) == {"status_id"}
    assert synced.api_requests() == []
    # Loss reasons are mirrored: an unknown one is caught before sending.
    reasons = db.session.scalars(
        select(LossReason.id).where(LossReason.owner_id == synced.id)
    ).all()
    assert len(reasons) == 3
    unknown = update_lead(
        synced.id, lead.id, {"status_id": 143, "loss_reason_id": 7}, lead.updated_at
    )
    assert isinstance(unknown, Invalid) and list(unknown.fields) == ["loss_reason_id"]
    assert synced.api_requests() == []
    # amoCRM's own 400 maps to the field its path names.
    refused = update_lead(synced.id, lead.id, {"responsible_user_id": 4242}, lead.updated_at)
    assert isinstance(refused, Invalid), refused
    assert list(refused.fields) == ["responsible_user_id"]
    assert "NotSupportedChoice" in refused.fields["responsible_user_id"]
    lost = update_lead(
        synced.id, lead.id, {"status_id": 143, "loss_reason_id": reasons[0]}, lead.updated_at
    )
    assert isinstance(lost, Applied), lost
    assert synced.record("leads", lead.id)["loss_reason_id"] == reasons[0]
    assert isinstance(update_lead(synced.id, 1, {"price": 1}, 0), NotFound)


def test_outage_queues_then_drain_applies_in_order(synced: Owner, kicks) -> None:
    lead = _lead(synced, 3)
    fault(synced.server, status=503, count=1000, method="PATCH")
    first = update_lead(synced.id, lead.id, {"price": 100}, lead.updated_at)
    assert isinstance(first, Pending) and first.payload == {"price": 100}
    assert kicks and kicks[-1][0] == synced.id
    # A second edit of the same deal waits behind the first without trying amoCRM.
    synced.server.clear_requests()
    second = update_lead(synced.id, lead.id, {"price": 200, "name": "B"}, lead.updated_at)
    assert isinstance(second, Pending) and synced.api_requests() == []
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    result = outbox.drain(synced.id)
    assert result.applied == 0 and result.retry_in is not None
    heal(synced.server)
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    synced.server.clear_requests()
    result = outbox.drain(synced.id)
    assert result.applied == 2 and result.conflicts == 0
    prices = [c["json"]["price"] for c in _writes(synced)]
    assert prices == [100, 200]  # in the order they were made
    assert synced.record("leads", lead.id)["price"] == 200
    rows = db.session.scalars(select(OutboxWrite).order_by(OutboxWrite.id)).all()
    assert [r.status for r in rows] == [OutboxStatus.APPLIED, OutboxStatus.APPLIED]
    assert _lead(synced, 3).name == "B"


def test_a_429_is_sent_once_then_left_to_the_outbox(synced: Owner, kicks) -> None:
    # The person never waits on the client's 429 backoff, and a drain pass ends at the first
    # 429: the outbox's own schedule is the only retry.
    lead = _lead(synced, 6)
    fault(synced.server, status=429, count=1000, method="PATCH", path="/api/v4/leads")
    assert isinstance(update_lead(synced.id, lead.id, {"price": 7}, lead.updated_at), Pending)
    assert len(synced.api_requests(method="PATCH")) == 1
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    synced.server.clear_requests()
    result = outbox.drain(synced.id)
    assert result.applied == 0 and result.retry_in is not None
    assert len(synced.api_requests(method="PATCH")) == 1
    heal(synced.server)


def test_change_made_in_amocrm_meanwhile_becomes_a_conflict(synced: Owner, kicks) -> None:
    synced.subscribe()
    lead = _lead(synced, 4)
    fault(synced.server, status=429, count=1000, method="PATCH", path="/api/v4/leads")
    assert isinstance(update_lead(synced.id, lead.id, {"price": 5}, lead.updated_at), Pending)
    heal(synced.server)
    synced.server.advance_clock(5)
    synced.manager("PATCH", f"leads/{lead.id}", json={"price": 999})
    synced.relay(expected=1)
    synced.process_webhooks()
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    synced.server.clear_requests()
    result = outbox.drain(synced.id)
    assert result.conflicts == 1 and result.applied == 0
    assert _writes(synced) == []
    assert synced.record("leads", lead.id)["price"] == 999  # theirs kept
    row = db.session.scalars(select(OutboxWrite)).one()
    assert row.status == OutboxStatus.CONFLICT
    assert row.result["theirs"]["price"] == 999 and row.result["yours"] == {"price": 5}


def test_note_task_and_contact_writes(synced: Owner, kicks) -> None:
    lead = _lead(synced, 5)
    note = add_note(synced.id, "leads", lead.id, "Перезвонить в пятницу")
    assert isinstance(note, Applied)
    stored = db.session.get(Note, (synced.id, note.entity_id))
    assert stored.text == "Перезвонить в пятницу" and stored.entity_id == lead.id
    assert synced.record("notes", note.entity_id)["params"]["text"] == "Перезвонить в пятницу"

    task = create_task(
        synced.id,
        text="Позвонить",
        complete_till=2_000_000_000,
        entity_type="leads",
        entity_id=lead.id,
    )
    assert isinstance(task, Applied)
    mirrored = db.session.get(Task, (synced.id, task.entity_id))
    assert mirrored.entity_id == lead.id and not mirrored.is_completed
    done = update_task(
        synced.id,
        task.entity_id,
        {"is_completed": True, "result": "Дозвонились"},
        mirrored.updated_at,
    )
    assert isinstance(done, Applied) and done.entity["is_completed"] is True
    assert synced.record("tasks", task.entity_id)["result"] == "Дозвонились"

    contact_id = synced.ids("contacts")[0]
    contact = db.session.get(Contact, (synced.id, contact_id))
    edited = update_contact(
        synced.id, contact_id, {"name": "Анна", "phones": ["+7 999 111-22-33"]}, contact.updated_at
    )
    assert isinstance(edited, Applied), edited
    db.session.expire_all()
    contact = db.session.get(Contact, (synced.id, contact_id))
    assert contact.name == "Анна" and contact.phone == "+79991112233"
    assert [(c["method"], c["path"].split("?")[0]) for c in _writes(synced)] == [
        ("POST", "/api/v4/leads/notes"),
        ("POST", "/api/v4/tasks"),
        ("PATCH", f"/api/v4/tasks/{task.entity_id}"),
        ("PATCH", f"/api/v4/contacts/{contact_id}"),
    ]


def test_new_deal_with_new_contact_is_one_complex_request(synced: Owner, kicks) -> None:
    lead = _lead(synced, 0)
    outcome = create_lead(
        synced.id,
        name="Новая сделка",
        price=1500,
        status_id=lead.status_id,
        contact={"name": "Ольга", "phone": "+79990001234", "email": "olga@example.com"},
    )
    assert isinstance(outcome, Applied), outcome
    assert [(c["method"], c["path"]) for c in synced.api_requests()] == [
        ("POST", "/api/v4/leads/complex")
    ]
    row = db.session.get(Lead, (synced.id, outcome.entity_id))
    assert (row.name, row.price, row.status_id) == ("Новая сделка", 1500, lead.status_id)
    contact = db.session.get(Contact, (synced.id, row.main_contact_id))
    assert contact.phone == "+79990001234" and contact.email == "olga@example.com"
    existing = create_lead(synced.id, name="Ещё", contact_id=contact.id)
    assert isinstance(existing, Applied)
    assert synced.record("leads", existing.entity_id)["contacts"][0][0] == contact.id


def test_a_note_whose_answer_was_lost_is_not_added_twice(synced: Owner, kicks) -> None:
    lead = _lead(synced, 6)
    fault(synced.server, status=504, method="POST", path="/api/v4/leads/notes", after=True)
    outcome = add_note(synced.id, "leads", lead.id, "Один раз")
    assert isinstance(outcome, Pending)
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    synced.server.clear_requests()
    result = outbox.drain(synced.id)
    assert result.applied == 1
    notes = [
        n
        for n in synced.server.account.tables["notes"].records.values()
        if n["entity_id"] == lead.id and n["params"].get("text") == "Один раз"
    ]
    assert len(notes) == 1
    assert [c["method"] for c in synced.api_requests()] == ["GET"]  # looked, did not resend
    assert db.session.get(Note, (synced.id, notes[0]["id"])) is not None


def test_prune_forgets_only_settled_edits_past_retention(owner: Owner) -> None:
    from datetime import UTC, datetime, timedelta

    from crm_app.models import OutboxStatus, OutboxWrite

    old = datetime.now(UTC) - timedelta(days=31)
    recent = datetime.now(UTC) - timedelta(days=1)
    rows = {
        "applied-old": (OutboxStatus.APPLIED, old),
        "dismissed-old": (OutboxStatus.DISMISSED, old),
        "applied-recent": (OutboxStatus.APPLIED, recent),
        "conflict-old": (OutboxStatus.CONFLICT, old),  # still asks for a decision
        "failed-old": (OutboxStatus.FAILED, old),
        "pending": (OutboxStatus.PENDING, None),
    }
    for name, (status, finished) in rows.items():
        db.session.add(
            OutboxWrite(
                owner_id=owner.id,
                entity_type="leads",
                entity_id=1,
                op="update",
                payload={"name": name},
                status=status,
                finished_at=finished,
            )
        )
    db.session.commit()
    assert outbox.prune(batch=1) == 2  # batches smaller than the work still finish it
    left = db.session.scalars(select(OutboxWrite.payload).where(OutboxWrite.owner_id == owner.id))
    assert sorted(p["name"] for p in left) == [
        "applied-recent",
        "conflict-old",
        "failed-old",
        "pending",
    ]
    assert outbox.prune() == 0
