"""The notes mirror: full and incremental sync of lead and contact notes, and note webhooks."""

from __future__ import annotations

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Note, SyncCursor
from crm_app.services.sync import run_sync, start_sync
from tests.workspace.conftest import Owner


def _sync(owner: Owner, **kwargs):
    run = start_sync(owner.id, enqueue=False, **kwargs)
    run_sync(run.id)
    db.session.expire_all()
    return db.session.get(type(run), run.id)


def _notes(owner_id: int) -> dict[int, Note]:
    db.session.expire_all()
    return {n.id: n for n in db.session.scalars(select(Note).where(Note.owner_id == owner_id))}


def test_full_then_incremental_sync_mirrors_notes(owner: Owner) -> None:
    lead_id, contact_id = owner.ids("leads")[0], owner.ids("contacts")[0]
    owner.manager(
        "POST",
        f"leads/{lead_id}/notes",
        json={"note_type": "common", "params": {"text": "Позвонить утром"}},
    )
    call = {
        "note_type": "call_in",
        "params": {"uniq": "c-1", "duration": 61, "source": "sip", "link": "https://x/r.mp3", "phone": "+79990001122"},
    }  # fmt: skip
    owner.manager("POST", f"contacts/{contact_id}/notes", json=call)

    run = _sync(owner, full=True)
    assert run.status == "success", run.error
    notes = _notes(owner.id)
    sandbox_notes = owner.server.account.tables["notes"].records
    assert set(notes) == set(sandbox_notes)
    by_type = {n.note_type: n for n in notes.values()}
    text = by_type["common"]
    assert (text.entity_type, text.entity_id, text.text) == ("leads", lead_id, "Позвонить утром")
    assert text.params == {"text": "Позвонить утром"}
    assert text.created_by and text.responsible_user_id and text.created_at and text.updated_at
    call_row = by_type["call_in"]
    assert (call_row.entity_type, call_row.entity_id) == ("contacts", contact_id)
    assert call_row.params["duration"] == 61 and call_row.text is None
    for entity in ("lead_notes", "contact_notes"):
        assert db.session.get(SyncCursor, (owner.id, entity)) is not None

    # A later note arrives with the next incremental pass, asked for by updated_at.
    owner.server.advance_clock(5)
    owner.manager(
        "POST", f"leads/{lead_id}/notes", json={"note_type": "common", "params": {"text": "Второе"}}
    )
    owner.server.clear_requests()
    run = _sync(owner)
    assert run.status == "success", run.error
    assert run.counts["lead_notes"]["mode"] == "incremental"
    assert {n.text for n in _notes(owner.id).values()} >= {"Позвонить утром", "Второе"}
    calls = owner.api_requests("/api/v4/leads/notes")
    assert len(calls) == 1 and "filter%5Bupdated_at%5D%5Bfrom%5D=" in calls[0]["path"]


def test_full_sync_drops_notes_gone_from_amocrm_without_touching_the_other_kind(
    owner: Owner,
) -> None:
    lead_id, contact_id = owner.ids("leads")[1], owner.ids("contacts")[1]
    owner.manager(
        "POST", f"leads/{lead_id}/notes", json={"note_type": "common", "params": {"text": "a"}}
    )
    owner.manager(
        "POST",
        f"contacts/{contact_id}/notes",
        json={"note_type": "common", "params": {"text": "b"}},
    )
    assert _sync(owner, full=True).status == "success"
    lead_note = next(n.id for n in _notes(owner.id).values() if n.entity_type == "leads")
    # amoCRM has no note DELETE in its API; a note removed in amoCRM is simply gone.
    with owner.server.account.lock:
        owner.server.account.tables["notes"].delete(lead_note)
    assert _sync(owner, entities=["notes"], full=True).status == "success"
    remaining = _notes(owner.id)
    assert lead_note not in remaining
    assert [n.entity_type for n in remaining.values()] == ["contacts"]


def test_note_webhooks_reach_the_notes_mirror(owner: Owner) -> None:
    owner.subscribe()
    lead_id, contact_id = owner.ids("leads")[2], owner.ids("contacts")[2]
    owner.manager(
        "POST",
        f"leads/{lead_id}/notes",
        json={"note_type": "common", "params": {"text": "Из вебхука"}},
    )
    owner.manager(
        "POST",
        f"contacts/{contact_id}/notes",
        json={"note_type": "sms_in", "params": {"text": "SMS", "phone": "+79990001122"}},
    )
    assert owner.relay(expected=2) == 2
    owner.server.clear_requests()
    result = owner.process_webhooks()
    assert result["changes"] == 2
    notes = {(n.entity_type, n.entity_id): n for n in _notes(owner.id).values()}
    assert notes[("leads", lead_id)].text == "Из вебхука"
    assert notes[("contacts", contact_id)].note_type == "sms_in"
    # One read per kind, by id, for the two notes.
    gets = owner.api_requests("/api/v4/", "GET")
    assert sorted(r["path"].split("?")[0] for r in gets) == [
        "/api/v4/contacts/notes",
        "/api/v4/leads/notes",
    ]
