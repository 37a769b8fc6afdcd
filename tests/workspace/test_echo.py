"""The webhook echo of our own write is recognised: amoCRM is not asked again."""

from __future__ import annotations

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Lead, PipelineStatus
from crm_app.services.workspace import Applied, add_note, update_lead
from tests.workspace.conftest import Owner


def test_status_change_echo_is_not_re_read(synced: Owner, kicks) -> None:
    synced.subscribe()
    lead = db.session.get(Lead, (synced.id, synced.ids("leads")[0]))
    target = db.session.scalar(
        select(PipelineStatus.id).where(
            PipelineStatus.owner_id == synced.id,
            PipelineStatus.pipeline_id == lead.pipeline_id,
            PipelineStatus.type == 0,
            PipelineStatus.id.not_in([lead.status_id, 142, 143]),
        )
    )
    synced.server.clear_requests()
    outcome = update_lead(synced.id, lead.id, {"status_id": target}, lead.updated_at)
    assert isinstance(outcome, Applied)
    note = add_note(synced.id, "leads", lead.id, "Эхо")
    assert isinstance(note, Applied)
    # status_lead (+ update_lead) for the edit, note_lead for the note.
    assert synced.relay(expected=2) >= 2
    result = synced.process_webhooks()
    assert result["changes"] == 0, result
    calls = synced.api_requests()
    assert [(c["method"], c["path"].split("?")[0]) for c in calls] == [
        ("PATCH", f"/api/v4/leads/{lead.id}"),
        ("POST", "/api/v4/leads/notes"),
    ]

    # A manager's change to the same deal afterwards is someone else's: it is read.
    synced.server.advance_clock(2)
    synced.manager("PATCH", f"leads/{lead.id}", json={"price": 31337})
    synced.relay(expected=1)
    synced.server.clear_requests()
    assert synced.process_webhooks()["changes"] >= 1
    assert [c["method"] for c in synced.api_requests()] == ["GET"]
    db.session.expire_all()
    assert db.session.get(Lead, (synced.id, lead.id)).price == 31337
