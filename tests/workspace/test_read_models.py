"""Read models for the workspace screens: board, deals table, cards, task lists, conflicts."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import Contact, Lead, OutboxWrite, Task
from crm_app.services.workspace import Applied, Pending, add_note, create_task, outbox, update_lead
from crm_app.services.workspace.board import DealFilter, board, board_column, deals_table
from crm_app.services.workspace.cards import (
    choices,
    contact_card,
    deal_card,
    dismiss,
    reapply,
    task_list,
)
from tests.workspace.conftest import Owner, fault, heal


def _leads(owner: Owner) -> list[Lead]:
    db.session.expire_all()
    return list(db.session.scalars(select(Lead).where(Lead.owner_id == owner.id)))


def test_board_columns_totals_and_keyset_paging(synced: Owner) -> None:
    view = board(synced.id, per_column=2)
    assert view is not None and view.pipeline.is_main
    leads = [lead for lead in _leads(synced) if lead.pipeline_id == view.pipeline.id]
    assert [c.status.id for c in view.columns] == [s.id for s in view.pipeline.statuses]
    assert sum(c.count for c in view.columns) == len(leads)
    assert sum(c.total_price for c in view.columns) == sum(lead.price or 0 for lead in leads)
    busiest = max(view.columns, key=lambda c: c.count)
    assert busiest.count > 2 and len(busiest.cards) == 2 and busiest.next_cursor
    seen = [card.id for card in busiest.cards]
    cursor = busiest.next_cursor
    while cursor:
        page = board_column(synced.id, view.pipeline.id, busiest.status.id, after=cursor, limit=2)
        assert page is not None
        seen.extend(card.id for card in page.cards)
        cursor = page.next_cursor
    expected = sorted(
        (lead for lead in leads if lead.status_id == busiest.status.id),
        key=lambda lead: (lead.updated_at, lead.id),
        reverse=True,
    )
    assert seen == [lead.id for lead in expected]  # newest change first, each card once
    card = busiest.cards[0]
    lead = db.session.get(Lead, (synced.id, card.id))
    assert card.updated_at == lead.updated_at and card.contact_id == lead.main_contact_id
    assert board_column(synced.id, view.pipeline.id, 424242) is None
    # The version (an ETag) moves when a deal of the pipeline changes.
    before = view.version
    target = next(s.id for s in view.pipeline.statuses if s.id != lead.status_id and s.type == 0)
    assert isinstance(
        update_lead(synced.id, lead.id, {"status_id": target}, lead.updated_at), Applied
    )
    assert board(synced.id, view.pipeline.id).version != before


def test_deals_table_filters_search_sort_and_count(synced: Owner) -> None:
    leads = _leads(synced)
    everything = deals_table(synced.id, DealFilter(per_page=5))
    assert (
        everything.total == len(leads)
        and len(everything.rows) == 5
        and everything.pages == -(-len(leads) // 5)
    )
    by_price = deals_table(synced.id, DealFilter(sort="price", desc=False, per_page=200))
    prices = [r.price for r in by_price.rows]
    assert prices == sorted(prices)
    pipeline_id = leads[0].pipeline_id
    mine = deals_table(synced.id, DealFilter(pipeline_id=pipeline_id, state="open", per_page=200))
    assert all(r.pipeline_id == pipeline_id and r.status_id not in (142, 143) for r in mine.rows)
    assert mine.total == sum(
        1 for x in leads if x.pipeline_id == pipeline_id and x.status_id not in (142, 143)
    )
    named = leads[3]
    found = deals_table(synced.id, DealFilter(q=(named.name or "")[:6]))
    assert named.id in [r.id for r in found.rows]
    with_contact = next(x for x in leads if x.main_contact_id)
    contact = db.session.get(Contact, (synced.id, with_contact.main_contact_id))
    if contact.phone:
        national = "8" + contact.phone[2:]
        by_phone = deals_table(synced.id, DealFilter(q=national, per_page=200))
        assert with_contact.id in [r.id for r in by_phone.rows]
    if contact.email:
        by_email = deals_table(synced.id, DealFilter(q=contact.email.upper(), per_page=200))
        assert with_contact.id in [r.id for r in by_email.rows]
    stamp = sorted(x.updated_at for x in leads)[len(leads) // 2]
    recent = deals_table(synced.id, DealFilter(updated_from=stamp, per_page=200))
    assert recent.total == sum(1 for x in leads if x.updated_at >= stamp)


def test_deal_and_contact_cards_with_notes_tasks_and_pending(synced: Owner, kicks) -> None:
    lead = next(x for x in _leads(synced) if x.main_contact_id)
    assert isinstance(add_note(synced.id, "leads", lead.id, "первая"), Applied)
    synced.server.advance_clock(2)
    assert isinstance(add_note(synced.id, "leads", lead.id, "вторая"), Applied)
    overdue = create_task(
        synced.id,
        text="просрочена",
        complete_till=int(time.time()) - 3600,
        entity_type="leads",
        entity_id=lead.id,
    )
    assert isinstance(overdue, Applied)
    fault(synced.server, status=503, count=100, method="PATCH")
    db.session.expire_all()
    lead = db.session.get(Lead, (synced.id, lead.id))
    assert isinstance(update_lead(synced.id, lead.id, {"price": 9}, lead.updated_at), Pending)
    heal(synced.server)

    view = deal_card(synced.id, lead.id)
    assert view is not None
    assert view.deal.id == lead.id and view.deal.pending is True
    assert view.status_name and view.pipeline_name
    assert [n.text for n in view.notes][:2] == ["вторая", "первая"]
    assert view.contacts[0].is_main and view.contacts[0].id == lead.main_contact_id
    contact = db.session.get(Contact, (synced.id, lead.main_contact_id))
    assert view.contacts[0].phones == contact.phones
    task = next(t for t in view.tasks if t.id == overdue.entity_id)
    assert task.overdue and task.task_type_name
    assert [p.payload for p in view.pending] == [{"price": 9}]
    assert deal_card(synced.id, 1) is None

    card = contact_card(synced.id, contact.id)
    assert card is not None and lead.id in [d.id for d in card.deals]
    assert card.phones == contact.phones and card.updated_at == contact.updated_at


def test_task_lists_put_overdue_first_and_filter_mine(synced: Owner, kicks) -> None:
    now = int(time.time())
    owner_user = synced.server.account.users[-1].id
    late = create_task(
        synced.id, text="late", complete_till=now - 86400, responsible_user_id=owner_user
    )
    soon = create_task(
        synced.id, text="soon", complete_till=now + 600, responsible_user_id=owner_user
    )
    assert isinstance(late, Applied) and isinstance(soon, Applied)
    page = task_list(synced.id, per_page=200)
    dues = [t.complete_till for t in page.rows]
    assert dues == sorted(dues) and all(not t.is_completed for t in page.rows)
    assert page.overdue == sum(1 for t in page.rows if t.overdue) and page.rows[0].overdue
    mine = task_list(synced.id, responsible_user_id=owner_user, per_page=200)
    assert {late.entity_id, soon.entity_id} <= {t.id for t in mine.rows}
    assert all(t.responsible_user_id == owner_user for t in mine.rows)
    assert mine.rows.index(next(t for t in mine.rows if t.id == late.entity_id)) < mine.rows.index(
        next(t for t in mine.rows if t.id == soon.entity_id)
    )
    done = db.session.scalar(
        select(func.count()).select_from(Task).where(Task.owner_id == synced.id)
    )
    assert task_list(synced.id, include_completed=True, per_page=200).total == done
    form = choices(synced.id)
    assert form.pipelines and form.users and len(form.loss_reasons) == 3 and form.task_types


def test_conflict_can_be_reapplied_on_top_or_dismissed(synced: Owner, kicks) -> None:
    synced.subscribe()
    first, second = [x for x in _leads(synced)][:2]
    fault(synced.server, status=503, count=100, method="PATCH")
    for lead, price in ((first, 11), (second, 22)):
        assert isinstance(
            update_lead(synced.id, lead.id, {"price": price}, lead.updated_at), Pending
        )
    heal(synced.server)
    synced.server.advance_clock(3)
    for lead in (first, second):
        synced.manager("PATCH", f"leads/{lead.id}", json={"name": f"theirs {lead.id}"})
    synced.relay(expected=2)
    synced.process_webhooks()
    db.session.execute(OutboxWrite.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    assert outbox.drain(synced.id).conflicts == 2
    [conflict] = deal_card(synced.id, first.id).conflicts
    assert conflict.theirs["name"] == f"theirs {first.id}" and conflict.payload == {"price": 11}
    outcome = reapply(synced.id, conflict.id)
    assert isinstance(outcome, Applied), outcome
    record = synced.record("leads", first.id)
    assert (record["name"], record["price"]) == (f"theirs {first.id}", 11)  # theirs plus mine
    assert deal_card(synced.id, first.id).conflicts == []
    [other] = deal_card(synced.id, second.id).conflicts
    assert dismiss(synced.id, other.id) is True
    assert deal_card(synced.id, second.id).conflicts == []
    assert synced.record("leads", second.id)["price"] != 22
    assert dismiss(synced.id + 1000, other.id) is False
