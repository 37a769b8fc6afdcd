"""The workspace's HTML: sections, board, table, cards; every write route × role × owner;
the conflict flow; polls answered 304 while nothing changed."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Lead, Note, PipelineStatus, Task
from tests.workspace.conftest import Owner


@pytest.fixture
def people(synced: Owner, make_user) -> Owner:
    from crm_app.commands.users import get_or_create_owner

    get_or_create_owner("other")
    make_user("boss", role="admin", owner="acme")
    make_user("ann", role="user", owner="acme")
    make_user("gus", role="guest", owner="acme")
    make_user("eve", role="user", owner="other")
    return synced


def _lead(owner: Owner, index: int = 0) -> Lead:
    db.session.expire_all()
    row = db.session.get(Lead, (owner.id, owner.ids("leads")[index]))
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


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


HX = {"HX-Request": "true"}


def test_sections_render_for_every_role(people: Owner, client, login) -> None:
    lead = _lead(people)
    for user in ("boss", "ann", "gus"):
        login(user)
        for url in (
            "/admin/crm/deals",
            "/admin/crm/deals/table?q=&state=open&sort=price&dir=asc",
            "/admin/crm/people",
            "/admin/crm/agenda?who=all",
            f"/admin/crm/deals/{lead.id}",
            f"/admin/crm/people/{lead.main_contact_id}"
            if lead.main_contact_id
            else "/admin/crm/people",
            "/admin/crm",
        ):
            resp = client.get(url)
            assert resp.status_code == 200, (user, url, resp.get_data(as_text=True)[:400])
            html = resp.get_data(as_text=True)
            assert 'id="ws-nav"' in html
            writable = 'class="ws-handle"' in html or 'id="deal-edit"' in html
            if user == "gus":
                assert not writable and "ws-move-form" not in html and 'id="note-form"' not in html
        board = client.get("/admin/crm/deals").get_data(as_text=True)
        assert ('class="ws-handle"' in board) == (user != "gus")
        assert lead.name in board


def test_board_columns_totals_and_paging(people: Owner, client, login) -> None:
    login("ann")
    html = client.get("/admin/crm/deals").get_data(as_text=True)
    counts = [int(n) for n in re.findall(r'<span class="ws-count">(\d+)</span>', html)]
    lead = _lead(people)
    total = db.session.scalar(
        select(db.func.count())
        .select_from(Lead)
        .where(Lead.owner_id == people.id, Lead.pipeline_id == lead.pipeline_id)
    )
    assert sum(counts) == total
    # A column's next page: the cursor of the first page gives other cards.
    from crm_app.services.workspace.board import board_column

    first = board_column(people.id, lead.pipeline_id, lead.status_id, limit=1)
    assert first is not None
    if first.next_cursor:
        resp = client.get(
            f"/admin/crm/deals/column/{lead.pipeline_id}/{lead.status_id}?after={first.next_cursor}",
            headers=HX,
        )
        assert resp.status_code == 200
        assert f'id="deal-{first.cards[0].id}"' not in resp.get_data(as_text=True)


def test_board_poll_answers_304_until_a_deal_changes(people: Owner, client, login) -> None:
    login("ann")
    lead = _lead(people)
    url = f"/admin/crm/deals?pipeline_id={lead.pipeline_id}"
    first = client.get(url, headers=HX)
    etag = first.headers["ETag"]
    again = client.get(url, headers={**HX, "If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    people.subscribe()
    people.manager("PATCH", f"leads/{lead.id}", json={"name": "Changed by a manager"})
    people.relay()
    people.process_webhooks()
    assert _lead(people).name == "Changed by a manager"
    changed = client.get(url, headers={**HX, "If-None-Match": etag})
    assert changed.status_code == 200
    assert "Changed by a manager" in changed.get_data(as_text=True)


def test_move_changes_the_status_in_amocrm_with_one_patch(
    people: Owner, client, login, kicks
) -> None:
    login("ann")
    lead = _lead(people)
    target = _other_status(people, lead)
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    resp = client.post(
        f"/admin/crm/deals/{lead.id}/move",
        data={
            "csrf_token": token,
            "status_id": target,
            "updated_at": lead.updated_at,
            "pipeline_id": lead.pipeline_id,
        },
        headers=HX,
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)[:400]
    assert people.record("leads", lead.id)["status_id"] == target
    patches = [r for r in people.api_requests() if r["method"] == "PATCH"]
    assert len(patches) == 1
    assert 'id="ws-board"' in resp.get_data(as_text=True)


def test_drop_into_lost_asks_for_the_loss_reason(people: Owner, client, login, kicks) -> None:
    from crm_app.models import LossReason

    if db.session.scalar(select(LossReason.id).where(LossReason.owner_id == people.id)) is None:
        pytest.skip("the sandbox account has no loss reasons")
    login("ann")
    lead = _lead(people, 1)
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    data = {"csrf_token": token, "status_id": 143, "updated_at": lead.updated_at}
    data["pipeline_id"] = lead.pipeline_id
    asked = client.post(f"/admin/crm/deals/{lead.id}/move", data=data, headers=HX)
    assert asked.status_code == 422
    assert 'id="ws-loss-reason"' in asked.get_data(as_text=True)
    assert people.api_requests(method="PATCH") == []
    reason = db.session.scalar(select(LossReason.id).where(LossReason.owner_id == people.id))
    done = client.post(
        f"/admin/crm/deals/{lead.id}/move", data={**data, "loss_reason_id": reason}, headers=HX
    )
    assert done.status_code == 200
    assert people.record("leads", lead.id)["status_id"] == 143


def test_edit_conflict_shows_both_versions_and_applies_mine_on_top(
    people: Owner, client, login, kicks
) -> None:
    login("ann")
    lead = _lead(people)
    page = client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True)
    token = _csrf(page)
    seen = lead.updated_at
    people.subscribe()
    # A manager renames the deal in amoCRM; the webhook brings it into the mirror.
    people.manager("PATCH", f"leads/{lead.id}", json={"name": "Theirs"})
    people.relay()
    people.process_webhooks()
    form = {"csrf_token": token, "updated_at": seen, "name": "Mine", "price": lead.price or 0}
    resp = client.post(f"/admin/crm/deals/{lead.id}/edit", data=form, headers=HX)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 409
    assert 'id="ws-conflict"' in html and "Theirs" in html and "Mine" in html
    assert people.record("leads", lead.id)["name"] == "Theirs"  # nothing was sent
    theirs_version = re.search(
        r'id="ws-conflict".*?name="updated_at" value="(\d+)"', html, re.S
    ).group(1)
    again = client.post(
        f"/admin/crm/deals/{lead.id}/edit",
        data={"csrf_token": token, "updated_at": theirs_version, "name": "Mine"},
        headers=HX,
    )
    assert again.status_code == 200, again.get_data(as_text=True)[:400]
    assert people.record("leads", lead.id)["name"] == "Mine"


def test_validation_error_is_shown_next_to_the_field(people: Owner, client, login, kicks) -> None:
    login("ann")
    lead = _lead(people)
    token = _csrf(client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True))
    resp = client.post(
        f"/admin/crm/deals/{lead.id}/edit",
        data={"csrf_token": token, "updated_at": lead.updated_at, "status_id": 999999},
        headers=HX,
    )
    assert resp.status_code == 422
    assert 'id="err-edit-status-id"' in resp.get_data(as_text=True)


def test_note_task_and_complete_from_the_card(people: Owner, client, login, kicks) -> None:
    login("ann")
    lead = _lead(people)
    token = _csrf(client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True))
    note = client.post(
        f"/admin/crm/deals/{lead.id}/notes",
        data={"csrf_token": token, "text": "Called, will pay Friday"},
        headers=HX,
    )
    assert note.status_code == 200
    assert "Called, will pay Friday" in note.get_data(as_text=True)
    assert db.session.scalar(select(Note.id).where(Note.text == "Called, will pay Friday"))
    task = client.post(
        f"/admin/crm/deals/{lead.id}/tasks",
        data={
            "csrf_token": token,
            "text": "Send the contract",
            "complete_till": "2030-01-02T10:00",
        },
        headers=HX,
    )
    assert task.status_code == 200, task.get_data(as_text=True)[:400]
    db.session.expire_all()
    row = db.session.scalar(select(Task).where(Task.text == "Send the contract"))
    assert row is not None and row.entity_id == lead.id
    done = client.post(
        f"/admin/crm/agenda/{row.id}/complete",
        data={
            "csrf_token": token,
            "result": "Sent",
            "updated_at": row.updated_at,
            "from": "leads",
            "entity_id": lead.id,
        },
        headers=HX,
    )
    assert done.status_code == 200
    assert people.record("tasks", row.id)["is_completed"] is True


def test_create_deal_with_a_new_contact(people: Owner, client, login, kicks) -> None:
    login("ann")
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    resp = client.post(
        "/admin/crm/deals/new",
        data={"csrf_token": token, "name": "Fresh deal", "price": "500", "contact_name": "Ivan"},
    )
    assert resp.status_code == 303
    lead_id = int(resp.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    assert people.record("leads", lead_id)["name"] == "Fresh deal"
    assert client.get(resp.headers["Location"]).status_code == 200


def test_table_search_filters_and_count(people: Owner, client, login) -> None:
    login("gus")
    lead = _lead(people)
    html = client.get(f"/admin/crm/deals/table?q={lead.name}").get_data(as_text=True)
    assert f'id="row-{lead.id}"' in html
    none = client.get("/admin/crm/deals/table?q=no-such-deal-anywhere").get_data(as_text=True)
    assert 'id="ws-no-deals"' in none
    bad = client.get("/admin/crm/deals/table?created_from=yesterday")
    assert bad.status_code == 400


WRITES = [
    ("/admin/crm/deals/{lead}/edit", {"name": "x"}),
    ("/admin/crm/deals/{lead}/move", {"status_id": "142"}),
    ("/admin/crm/deals/{lead}/notes", {"text": "x"}),
    ("/admin/crm/deals/{lead}/tasks", {"text": "x", "complete_till": "2030-01-01T10:00"}),
    ("/admin/crm/deals/new", {"name": "x"}),
    ("/admin/crm/people/{contact}/edit", {"name": "x"}),
    ("/admin/crm/people/{contact}/notes", {"text": "x"}),
    ("/admin/crm/agenda/{task}/complete", {"result": "x"}),
    ("/admin/crm/outbox/1/dismiss", {"entity_type": "leads", "entity_id": "{lead}"}),
]


@pytest.mark.parametrize(("path", "form"), WRITES)
def test_write_routes_refuse_guest_foreign_owner_and_missing_csrf(
    people: Owner, client, login, kicks, path: str, form: dict[str, str]
) -> None:
    lead = _lead(people)
    task_id = people.ids("tasks")[0]
    ids = {
        "lead": lead.id,
        "contact": lead.main_contact_id or people.ids("contacts")[0],
        "task": task_id,
    }
    url = path.format(**ids)
    data = {k: v.format(**ids) for k, v in form.items()}
    before = len(people.api_requests())
    # A guest: 403, nothing sent.
    login("gus")
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    assert client.post(url, data={**data, "csrf_token": token}).status_code == 403
    # Another owner's user: the deal is not theirs (404), nothing sent.
    login("eve")
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    resp = client.post(url, data={**data, "csrf_token": token})
    if "/new" in url:
        assert resp.status_code in (303, 409)  # their own owner, which is not connected
    else:
        assert resp.status_code == 404
    # ...nor may they pick the other owner by ?owner_id=.
    assert (
        client.post(url + f"?owner_id={people.id}", data={**data, "csrf_token": token}).status_code
        == 404
    )
    # A writer without the CSRF token: refused.
    login("ann")
    assert client.post(url, data=data).status_code == 400
    assert len(people.api_requests()) == before
    # The admin of another owner may act on it by ?owner_id= (the page links carry it).
    login("boss")
    assert client.get(f"/admin/crm/deals/{lead.id}?owner_id={people.id}").status_code == 200


def test_reading_another_owners_card_is_404(people: Owner, client, login) -> None:
    lead = _lead(people)
    login("eve")
    assert client.get(f"/admin/crm/deals/{lead.id}").status_code == 404
    assert client.get(f"/admin/crm/deals/{lead.id}?owner_id={people.id}").status_code == 404
    assert client.get(f"/admin/crm/people/{people.ids('contacts')[0]}").status_code == 404


def test_task_due_time_is_the_persons_wall_clock_and_a_refused_form_keeps_what_was_typed(
    people: Owner, client, login, kicks
) -> None:
    from datetime import UTC, datetime

    login("ann")
    lead = _lead(people)
    token = _csrf(client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True))
    cases = [
        ("Moscow", "-180", datetime(2030, 1, 2, 7, 0, tzinfo=UTC)),  # 10:00 at UTC+3
        ("New York", "300", datetime(2030, 1, 2, 15, 0, tzinfo=UTC)),  # 10:00 at UTC-5
        ("no JavaScript", "", datetime(2030, 1, 2, 10, 0, tzinfo=UTC)),  # the form says UTC
        ("nonsense offset", "99999", datetime(2030, 1, 2, 10, 0, tzinfo=UTC)),
    ]
    for name, offset, expected in cases:
        resp = client.post(
            f"/admin/crm/deals/{lead.id}/tasks",
            data={
                "csrf_token": token,
                "text": f"Call back ({name})",
                "complete_till": "2030-01-02T10:00",
                "tz_offset": offset,
            },
            headers=HX,
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)[:400]
        db.session.expire_all()
        due = db.session.scalar(
            select(Task.complete_till).where(Task.text == f"Call back ({name})")
        )
        assert due == int(expected.timestamp()), name
    refused = client.post(
        f"/admin/crm/deals/{lead.id}/tasks",
        data={
            "csrf_token": token,
            "text": "",
            "complete_till": "2030-03-04T09:30",
            "tz_offset": "-180",
        },
        headers=HX,
    )
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert 'id="err-task-text"' in html
    assert 'value="2030-03-04T09:30"' in html  # the due time typed is still in the form
    note = client.post(
        f"/admin/crm/deals/{lead.id}/notes", data={"csrf_token": token, "text": ""}, headers=HX
    )
    assert note.status_code in (400, 422)


def _fullest_column(owner: Owner) -> tuple[int, int, int]:
    """(pipeline, stage, deals) of the stage with the most deals."""
    row = db.session.execute(
        select(Lead.pipeline_id, Lead.status_id, db.func.count())
        .where(Lead.owner_id == owner.id)
        .group_by(Lead.pipeline_id, Lead.status_id)
        .order_by(db.func.count().desc())
        .limit(1)
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def _column_cards(html: str, status_id: int) -> list[int]:
    match = re.search(rf'<ol class="ws-cards" data-status-id="{status_id}".*?</ol>', html, re.S)
    assert match, f"no column {status_id}"
    return [int(i) for i in re.findall(r'data-deal-id="(\d+)"', match.group(0))]


def test_board_refresh_renders_the_cards_each_column_shows(people: Owner, app) -> None:
    from crm_app.services.workspace.board import board, board_column

    pipeline_id, status_id, count = _fullest_column(people)
    assert count >= 4, "the sandbox should give one stage at least four deals"
    first = board(people.id, pipeline_id, per_column=1)
    assert first is not None
    column = next(c for c in first.columns if c.status.id == status_id)
    assert len(column.cards) == 1 and column.next_cursor
    refreshed = board(people.id, pipeline_id, per_column=1, shown={status_id: 3, 1: 50})
    assert refreshed is not None
    column = next(c for c in refreshed.columns if c.status.id == status_id)
    assert len(column.cards) == 3
    # The cards of a first page plus the next pages, and the cursor continues after them.
    paged = board_column(people.id, pipeline_id, status_id, limit=count)
    assert paged is not None
    assert [c.id for c in column.cards] == [c.id for c in paged.cards[:3]]
    rest = board_column(people.id, pipeline_id, status_id, after=column.next_cursor, limit=count)
    assert rest is not None
    assert [c.id for c in rest.cards] == [c.id for c in paged.cards[3:]]
    # Other stages keep their first page.
    assert all(
        len(c.cards) == min(1, c.count) for c in refreshed.columns if c.status.id != status_id
    )


def test_column_limits_are_capped() -> None:
    from crm_app.services.workspace.board import (
        MAX_BOARD_CARDS,
        MAX_PER_COLUMN,
        column_limits,
    )

    assert column_limits([1, 2], 20, None) == {1: 20, 2: 20}
    assert column_limits([1, 2], 20, {1: 5, 2: 45}) == {1: 20, 2: 45}
    assert column_limits([1], 20, {1: 10**9}) == {1: MAX_PER_COLUMN}
    many = column_limits(list(range(100)), 20, dict.fromkeys(range(100), 10**9))
    assert sum(many.values()) <= MAX_BOARD_CARDS + 100 * 20
    assert min(many.values()) == 20 and max(many.values()) == MAX_PER_COLUMN


def test_board_poll_with_the_cards_on_screen(people: Owner, client, login, app) -> None:
    login("ann")
    app.config["WORKSPACE_BOARD_PAGE"] = 1
    pipeline_id, status_id, _count = _fullest_column(people)
    url = f"/admin/crm/deals?pipeline_id={pipeline_id}"
    first_resp = client.get(url, headers=HX)
    first, first_etag = first_resp.get_data(as_text=True), first_resp.headers["ETag"]
    assert len(_column_cards(first, status_id)) == 1
    unchanged = client.get(
        f"{url}&shown={status_id}:3", headers={**HX, "If-None-Match": first_etag}
    )
    assert unchanged.status_code == 304  # more cards on screen is no change of the board
    resp = client.get(f"{url}&shown={status_id}:3,999:7", headers=HX)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert len(_column_cards(html, status_id)) == 3
    # The "more" loader continues after the third card.
    more = re.search(
        rf'/deals/column/{pipeline_id}/{status_id}\?after=([^"&]+)', html.replace("&amp;", "&")
    )
    assert more, "the column should still offer its next page"
    after = client.get(
        f"/admin/crm/deals/column/{pipeline_id}/{status_id}?after={more.group(1)}", headers=HX
    ).get_data(as_text=True)
    found = [int(i) for i in re.findall(r'data-deal-id="(\d+)"', after)]
    assert found and not set(found) & set(_column_cards(html, status_id))
    # A crafted count is clamped; a malformed one is a 400 with a message, never a 500.
    huge = client.get(f"{url}&shown={status_id}:99999999999999999", headers=HX)
    assert huge.status_code == 200
    for bad in ("abc", f"{status_id}:-1", f"{status_id}", f"{status_id}:3," * 1000):
        resp = client.get(f"{url}&shown={bad}", headers=HX)
        assert resp.status_code == 400, (bad, resp.status_code)
        assert "shown" in resp.get_data(as_text=True)
        # Also when the poll would otherwise be a 304.
        etag = {"If-None-Match": first_etag}
        assert client.get(f"{url}&shown={bad}", headers={**HX, **etag}).status_code == 400


def test_move_keeps_the_cards_on_screen(people: Owner, client, login, kicks, app) -> None:
    login("ann")
    app.config["WORKSPACE_BOARD_PAGE"] = 1
    pipeline_id, status_id, _count = _fullest_column(people)
    lead = db.session.scalars(
        select(Lead).where(
            Lead.owner_id == people.id,
            Lead.pipeline_id == pipeline_id,
            Lead.status_id != status_id,
            Lead.status_id.not_in([142, 143]),
        )
    ).first()
    assert lead is not None
    html = client.get(f"/admin/crm/deals?pipeline_id={pipeline_id}").get_data(as_text=True)
    resp = client.post(
        f"/admin/crm/deals/{lead.id}/move",
        data={
            "csrf_token": _csrf(html),
            "status_id": str(status_id),
            "pipeline_id": str(pipeline_id),
            "updated_at": str(lead.updated_at),
            "shown": f"{status_id}:3",
        },
        headers=HX,
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    cards = _column_cards(resp.get_data(as_text=True), status_id)
    assert len(cards) == 3 and lead.id in cards  # the moved deal is the newest change


def _many_notes(owner: Owner, lead: Lead, count: int) -> list[int]:
    """`count` notes on the deal, straight into the mirror; their ids, newest first."""
    base = 900_000_000
    for i in range(count):
        db.session.add(
            Note(
                owner_id=owner.id,
                id=base + i,
                entity_type="leads",
                entity_id=lead.id,
                note_type="common",
                text=f"note number {i}",
                created_at=1_700_000_000 + i,
            )
        )
    db.session.commit()
    return [base + i for i in reversed(range(count))]


def test_older_notes_are_paged_by_id(people: Owner) -> None:
    from crm_app.services.workspace.cards import deal_card, note_page

    lead = _lead(people)
    ids = _many_notes(people, lead, 230)
    view = deal_card(people.id, lead.id)
    assert view is not None
    assert [n.id for n in view.notes] == ids[:100] and view.older_notes == ids[99]
    second = note_page(people.id, "leads", lead.id, before=view.older_notes)
    assert [n.id for n in second.items] == ids[100:200] and second.older == ids[199]
    last = note_page(people.id, "leads", lead.id, before=second.older)
    assert [n.id for n in last.items] == ids[200:] and last.older is None
    # A refresh down to the oldest note on screen keeps the pages opened, and at least one.
    kept = note_page(people.id, "leads", lead.id, down_to=ids[149])
    assert [n.id for n in kept.items] == ids[:150] and kept.older == ids[149]
    assert [n.id for n in note_page(people.id, "leads", lead.id, down_to=ids[0]).items] == ids[:100]
    assert len(note_page(people.id, "leads", lead.id, down_to=1).items) == 230
    assert note_page(people.id, "leads", 1).items == []


def test_show_older_notes_with_htmx_and_as_a_plain_link(people: Owner, client, login) -> None:
    login("gus")
    lead = _lead(people)
    ids = _many_notes(people, lead, 130)
    card = client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True)
    assert f'data-note-id="{ids[99]}"' in card and f'data-note-id="{ids[100]}"' not in card
    link = re.search(r'href="([^"]*notes_before=(\d+)[^"]*)"', card)
    assert link and int(link.group(2)) == ids[99]
    # Without JS: the card on the older page, with the way back to the newest notes.
    plain = client.get(link.group(1).replace("&amp;", "&").split("#")[0])
    html = plain.get_data(as_text=True)
    assert plain.status_code == 200 and 'id="ws-notes-newest"' in html
    assert f'data-note-id="{ids[100]}"' in html and f'data-note-id="{ids[99]}"' not in html
    assert "ws-notes-more" not in html  # 30 older notes: one page, nothing after
    # With htmx: only the older lines, to put in place of the link.
    piece = client.get(
        f"/admin/crm/deals/{lead.id}?part=notes&notes_before={ids[99]}", headers=HX
    ).get_data(as_text=True)
    assert 'id="ws-card"' not in piece
    assert re.findall(r'data-note-id="(\d+)"', piece) == [str(i) for i in ids[100:]]
    # A live refresh that names the oldest note on screen keeps the older page.
    live = client.get(
        f"/admin/crm/deals/{lead.id}?part=live&notes_to={ids[-1]}", headers=HX
    ).get_data(as_text=True)
    assert len(re.findall(r'data-note-id="', live)) == 130
    assert client.get(f"/admin/crm/deals/{lead.id}?notes_before=x").status_code == 400
    login("eve")
    other = client.get(f"/admin/crm/deals/{lead.id}?part=notes&notes_before=5", headers=HX)
    assert other.status_code == 404


def test_table_filters_several_stages_from_the_url(people: Owner, client, login) -> None:
    login("gus")
    rows = db.session.execute(
        select(Lead.status_id, db.func.count())
        .where(Lead.owner_id == people.id)
        .group_by(Lead.status_id)
        .order_by(db.func.count().desc())
    ).all()
    assert len(rows) >= 3, "the sandbox should spread deals over three stages at least"
    (one, n_one), (two, n_two), (three, _n) = rows[:3]
    url = f"/admin/crm/deals/table?status_id={one}&status_id={two}"
    html = client.get(url).get_data(as_text=True)
    assert f"Найдено: {n_one + n_two}" in html
    shown = {int(i) for i in re.findall(r'<tr id="row-(\d+)"', html)}
    expected = set(
        db.session.scalars(
            select(Lead.id).where(Lead.owner_id == people.id, Lead.status_id.in_([one, two]))
        )
    )
    assert shown == expected
    # The form offers every stage as a checkbox, the chosen ones checked.
    checked = set(re.findall(r'id="stage-(\d+)" name="status_id" value="\d+" checked', html))
    assert checked == {str(one), str(two)}
    assert f'id="stage-{three}" name="status_id" value="{three}">' in html
    # Won and lost are the same two stages in every pipeline: one checkbox each.
    boxes = re.findall(r'id="stage-(\d+)" name="status_id"', html)
    assert len(boxes) == len(set(boxes)) and {"142", "143"} <= set(boxes)
    # Sorting and paging links keep both stages; "all stages" drops them.
    sort = re.search(r'href="([^"]*sort=price[^"]*)"', html)
    assert sort and sort.group(1).count("status_id=") == 2
    clear = re.search(r'id="ws-stages-clear" href="([^"]*)"', html)
    assert clear and "status_id" not in clear.group(1)
    # Bad values in the URL are ignored, not a 500.
    assert client.get("/admin/crm/deals/table?status_id=abc&status_id=").status_code == 200


def _selected_stage(html: str) -> int:
    select_html = re.search(r'<select id="deal-status".*?</select>', html, re.S)
    assert select_html, "no stage select on the card"
    chosen = re.search(r'<option value="(\d+)" selected>', select_html.group(0))
    assert chosen, "no stage is selected"
    return int(chosen.group(1))


def test_a_deal_in_incoming_leads_keeps_its_stage_when_edited(
    people: Owner, client, login, kicks
) -> None:
    """The edit form cannot offer "Incoming leads" as a target, but a deal standing there must
    show it selected: saving a new price must not move the deal to the first stage offered."""
    login("ann")
    lead = _lead(people)
    unsorted = db.session.scalar(
        select(PipelineStatus.id).where(
            PipelineStatus.owner_id == people.id,
            PipelineStatus.pipeline_id == lead.pipeline_id,
            PipelineStatus.type == 1,
        )
    )
    if unsorted is None:
        pytest.skip("the sandbox pipeline has no incoming-leads stage")
    lead.status_id = unsorted
    db.session.commit()
    before = people.record("leads", lead.id)["status_id"]
    html = client.get(f"/admin/crm/deals/{lead.id}").get_data(as_text=True)
    assert _selected_stage(html) == unsorted
    form = {
        "csrf_token": _csrf(html),
        "updated_at": lead.updated_at,
        "was_status_id": unsorted,
        "status_id": _selected_stage(html),
        "was_price": lead.price or 0,
        "price": (lead.price or 0) + 1,
    }
    resp = client.post(f"/admin/crm/deals/{lead.id}/edit", data=form, headers=HX)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:400]
    record = people.record("leads", lead.id)
    assert record["price"] == (lead.price or 0) + 1
    assert record["status_id"] == before


def test_moving_a_deal_to_its_own_stage_sends_nothing(people: Owner, client, login, kicks) -> None:
    login("ann")
    lead = _lead(people)
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    data = {"csrf_token": token, "status_id": lead.status_id, "updated_at": lead.updated_at}
    resp = client.post(
        f"/admin/crm/deals/{lead.id}/move",
        data={**data, "pipeline_id": lead.pipeline_id},
        headers=HX,
    )
    assert resp.status_code == 200
    assert "Сделка уже на этом этапе." in resp.get_data(as_text=True)
    assert people.api_requests(method="PATCH") == []


def test_a_refused_write_says_why_in_the_page_language(people: Owner, client, login) -> None:
    """A deal without a name is refused with that reason (not the generic "could not parse"),
    in Russian on the Russian page and in English on the English one."""
    login("ann")
    token = _csrf(client.get("/admin/crm/deals").get_data(as_text=True))
    form = {"csrf_token": token, "name": "   ", "contact_name": "Ольга"}
    ru = client.post("/admin/crm/deals/new", data=form, headers=HX)
    assert ru.status_code == 400
    assert "data-error-detail>Укажите название сделки.<" in ru.get_data(as_text=True)
    client.get("/admin/crm/deals?lang=en")
    en = client.post("/admin/crm/deals/new", data=form, headers=HX)
    assert "data-error-detail>Enter the deal name.<" in en.get_data(as_text=True)
    assert people.api_requests(method="POST") == []


def test_a_malformed_email_is_refused_and_the_form_keeps_what_was_typed(
    people: Owner, client, login, kicks
) -> None:
    login("ann")
    contact_id = people.ids("contacts")[0]
    token = _csrf(client.get(f"/admin/crm/people/{contact_id}").get_data(as_text=True))
    form = {"csrf_token": token, "name": "Анна Новая", "emails": "not-an-email"}
    resp = client.post(f"/admin/crm/people/{contact_id}/edit", data=form, headers=HX)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422
    assert 'id="err-edit-emails"' in html and "not-an-email" in html
    assert 'value="Анна Новая"' in html
    assert people.api_requests(method="PATCH") == []


def test_a_browser_gets_workspace_errors_as_pages(people: Owner, client, login) -> None:
    """A missing deal or a bad filter opened in a browser is an error page in the page's
    language; an API client asking for JSON still gets problem+json."""
    login("ann")
    page = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    missing = client.get("/admin/crm/deals/999999999", headers=page)
    assert missing.status_code == 404
    assert missing.mimetype == "text/html"
    assert "Такой сделки нет." in missing.get_data(as_text=True)
    bad = client.get("/admin/crm/deals/table?created_from=yesterday", headers=page)
    assert bad.status_code == 400 and bad.mimetype == "text/html"
    machine = client.get("/admin/crm/deals/999999999", headers={"Accept": "application/json"})
    assert machine.status_code == 404 and machine.mimetype == "application/problem+json"
