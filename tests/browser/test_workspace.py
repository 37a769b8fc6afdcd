"""The CRM workspace in a real browser: the board (drag and the keyboard "move to"), a conflict
with a manager's change in amoCRM, notes and tasks, a new deal, a change arriving live, a guest;
a live refresh that keeps the loaded pages and scroll positions, older notes, several stages."""

from __future__ import annotations

import time

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.test_crm_page import _shot

pytestmark = pytest.mark.browser


def _login(page, base: str, username: str) -> None:
    page.goto(base + "/login")
    page.fill("#login-username", username)
    page.fill("#login-password", "password123")
    page.click("#login-submit")
    page.wait_for_url("**/admin/crm**")


def _record(sandbox, lead_id: int) -> dict:
    return sandbox.account.tables["leads"].get(lead_id)


def _wait(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def workspace(app, live_app, make_user, celery_worker):
    """An owner connected to the sandbox and synced; the sandbox's webhooks reach the app and a
    real worker applies them."""
    from crm_app.commands.users import get_or_create_owner
    from crm_app.services.amo import client_for_owner
    from crm_app.services.sync import run_sync, start_sync
    from crm_app.services.webhooks import ensure_webhook_token
    from testkit.sandbox_link import connect_owner_to_sandbox

    make_user("admin", role="admin", owner="acme")
    make_user("guest", role="guest", owner="acme")
    owner_id = get_or_create_owner("acme").id
    sandbox = live_app.sandbox
    connect_owner_to_sandbox(owner_id, sandbox)
    run = start_sync(owner_id, full=True, enqueue=False)
    run_sync(run.id)
    token = ensure_webhook_token(owner_id)
    with client_for_owner(owner_id) as api:
        api.subscribe_webhook(
            f"{live_app.url}/webhooks/amocrm/{token}",
            ["add_lead", "update_lead", "status_lead", "note_lead", "add_task", "update_task"],
        )
    celery_worker("workspace", concurrency=1)
    return owner_id


def _board_lead(page) -> tuple[int, int, int]:
    """A card of the first column with cards and a stage it can move to (not won/lost)."""
    card = page.locator(".ws-card").first
    lead_id = int(card.get_attribute("data-deal-id"))
    column = card.locator("xpath=ancestor::ol[1]")
    status_id = int(column.get_attribute("data-status-id"))
    stages = [int(s.get_attribute("data-status-id")) for s in page.locator(".ws-cards").all()]
    target = next(s for s in stages if s not in (status_id, 142, 143))
    return lead_id, status_id, target


def test_workspace_board_cards_and_guest(live_app, browser, workspace) -> None:
    base, sandbox = live_app.url, live_app.sandbox
    # A manager in Moscow: the task's due time typed below is Moscow time.
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, locale="ru-RU", timezone_id="Europe/Moscow"
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    _login(page, base, "admin")
    page.click("#nav-deals")
    page.wait_for_url("**/admin/crm/deals")
    page.wait_for_selector(".ws-card")
    _shot(page, "workspace-board")

    # Keyboard: open the card's "move to" menu, pick a stage, submit.
    lead_id, _from, target = _board_lead(page)
    card = page.locator(f"#deal-{lead_id}")
    card.locator("summary").focus()
    page.keyboard.press("Enter")
    card.locator("select[name=status_id]").select_option(str(target))
    card.locator(".ws-move-form button").focus()
    page.keyboard.press("Enter")
    _wait(lambda: _record(sandbox, lead_id)["status_id"] == target)
    expect(page.locator(f'ol[data-status-id="{target}"] #deal-{lead_id}')).to_be_visible()
    # The keyboard stays on the moved card, in its new column.
    expect(page.locator(f"#deal-{lead_id} .ws-card-name")).to_be_focused()

    # Drag: the card's handle onto another column.
    moved = lead_id
    lead_id, _status, target = _board_lead(page)
    handle = page.locator(f"#deal-{lead_id} .ws-handle")
    handle.drag_to(page.locator(f'ol[data-status-id="{target}"]'))
    _wait(lambda: _record(sandbox, lead_id)["status_id"] == target)
    expect(page.locator(f'ol[data-status-id="{target}"] #deal-{lead_id}')).to_be_visible()

    # A manager renames another deal in amoCRM (amoCRM's versions are whole seconds: a change
    # of the deal we just wrote, in the same second, is indistinguishable from our echo): the
    # open board shows it without a reload.
    lead_id = next(
        int(c.get_attribute("data-deal-id"))
        for c in page.locator(".ws-card").all()
        if int(c.get_attribute("data-deal-id")) not in (lead_id, moved)
    )
    requests.patch(
        f"{sandbox.url}/_sandbox/leads/{lead_id}", json={"name": "Renamed in amoCRM"}, timeout=5
    )
    expect(page.locator(f"#deal-{lead_id} .ws-card-name")).to_have_text(
        "Renamed in amoCRM", timeout=20000
    )

    # The deals table with a search that lives in the URL.
    page.click("#tab-table")
    page.fill("#deals-q", "Renamed in amoCRM")
    # Enter submits at once (typing alone waits for the debounce, slow on a loaded machine).
    page.press("#deals-q", "Enter")
    page.wait_for_url("**q=Renamed*", timeout=60000)
    expect(page.locator(f"#row-{lead_id}")).to_be_visible()
    _shot(page, "workspace-table")

    # The deal card: a manager changes the deal while the form is open → the conflict.
    page.goto(f"{base}/admin/crm/deals/{lead_id}")
    page.fill("#deal-name", "My name for it")
    requests.patch(f"{sandbox.url}/_sandbox/leads/{lead_id}", json={"price": 777}, timeout=5)
    expect(page.locator("#f-price")).to_contain_text("777", timeout=15000)
    page.click("#deal-save")
    expect(page.locator("#ws-conflict")).to_be_visible()
    assert _record(sandbox, lead_id)["name"] == "Renamed in amoCRM"
    page.click("#conflict-apply")
    _wait(lambda: _record(sandbox, lead_id)["name"] == "My name for it")
    expect(page.locator("#deal-title")).to_have_text("My name for it")
    expect(page.locator("#ws-conflict")).to_have_count(0)
    assert _record(sandbox, lead_id)["price"] == 777  # theirs kept, mine on top

    # A note, a task, the task completed.
    page.fill("#note-text", "Called the client")
    page.click("#note-add")
    expect(page.locator("#ws-notes")).to_contain_text("Called the client")
    page.fill("#task-text", "Send the offer")
    page.fill("#task-due", "2031-05-01T10:00")
    page.click("#task-add")
    task = page.locator(".ws-task", has_text="Send the offer")
    expect(task).to_be_visible()
    sent = [
        t for t in sandbox.account.tables["tasks"].records.values() if t["text"] == "Send the offer"
    ]
    assert [t["complete_till"] for t in sent] == [1935385200]  # 2031-05-01 07:00 UTC = 10:00 MSK
    task.locator("input[name=result]").fill("Sent")
    # Typed and left: a live change arriving meanwhile must not wipe the result.
    page.locator("#deal-title").click()
    requests.patch(f"{sandbox.url}/_sandbox/leads/{lead_id}", json={"price": 778}, timeout=5)
    page.wait_for_timeout(7000)  # two poll intervals: an unguarded poll would have swapped
    expect(task.locator("input[name=result]")).to_have_value("Sent")
    task.locator("button").click()
    expect(page.locator(".ws-task.is-done", has_text="Send the offer")).to_be_visible()
    _shot(page, "workspace-deal")

    # From the task list with the keyboard: Enter completes, the next task's field has focus.
    page.goto(f"{base}/admin/crm/agenda?who=all")
    field = page.locator(".ws-complete input[name=result]").first
    field_id = field.get_attribute("id")
    field.fill("Done from the list")
    field.press("Enter")
    expect(page.locator(f"#{field_id}")).to_have_count(0)
    expect(page.locator(".ws-complete input[name=result]:focus")).to_have_count(1)

    # A new deal with a new contact, from the board.
    page.click("#nav-deals")
    page.click("#ws-new-deal summary")
    page.fill("#new-deal-name", "Deal from the board")
    page.fill("#new-deal-contact", "Olga")
    page.click("#new-deal-submit")
    expect(page.locator("#deal-title")).to_have_text("Deal from the board")
    created = int(page.url.rstrip("/").rsplit("/", 1)[1].split("?")[0])
    assert _record(sandbox, created)["name"] == "Deal from the board"

    # English and the phone layout.
    page.goto(f"{base}/admin/crm/deals?lang=en")
    expect(page.locator("#nav-deals")).to_have_text("Deals")
    _shot(page, "workspace-board-en")
    page.goto(f"{base}/admin/crm/deals/table?lang=en")
    page.wait_for_selector(".ws-deals tbody td")
    _shot(page, "workspace-table-en")
    page.goto(f"{base}/admin/crm/deals/{lead_id}?lang=en")
    expect(page.locator("#deal-title")).to_be_visible()
    _shot(page, "workspace-deal-en")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    mobile = phone.new_page()
    _login(mobile, base, "admin")
    mobile.goto(f"{base}/admin/crm/deals")
    mobile.wait_for_selector(".ws-card")
    board = mobile.locator("#ws-columns")
    assert board.evaluate("el => el.scrollWidth > el.clientWidth")  # columns scroll sideways
    _shot(mobile, "workspace-board-phone")
    mobile.goto(f"{base}/admin/crm/deals/{lead_id}")
    _shot(mobile, "workspace-deal-phone")
    # The note form is far below the top on a phone: the answer still shows on the screen.
    mobile.fill("#note-text", "Noted from the phone")
    mobile.click("#note-add")
    expect(mobile.locator("#ws-notes")).to_contain_text("Noted from the phone")
    expect(mobile.locator("#flash .flash")).to_be_in_viewport()
    # The deals table scrolls sideways on a phone; the deal's name stays where it is.
    mobile.goto(f"{base}/admin/crm/deals/table")
    name_cell = mobile.locator(".ws-deals tbody td").first
    before = name_cell.bounding_box()
    mobile.locator(".table-scroll").evaluate("el => { el.scrollLeft = 200; }")
    assert mobile.locator(".table-scroll").evaluate("el => el.scrollLeft") > 0
    after = name_cell.bounding_box()
    assert before and after and abs(after["x"] - before["x"]) < 1
    mobile.locator(".table-scroll").evaluate("el => { el.scrollLeft = 0; }")
    _shot(mobile, "workspace-table-phone")
    # Contacts on a phone: one block per person, nothing to scroll sideways.
    mobile.goto(f"{base}/admin/crm/people")
    table = mobile.locator("#ws-section table").first
    expect(table).to_be_visible()
    assert table.evaluate("el => el.scrollWidth <= el.parentElement.clientWidth")
    assert mobile.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.close()

    # A guest sees everything and finds no way to write.
    guest = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    _login(guest, base, "guest")
    for url in ("/admin/crm/deals", f"/admin/crm/deals/{lead_id}", "/admin/crm/agenda?who=all"):
        guest.goto(base + url)
        assert guest.locator("#guest-badge").count() == 1
        assert (
            guest.locator(".ws-handle, .ws-move-form, #deal-edit, #note-form, #task-form").count()
            == 0
        )
        assert guest.locator("main form[method=post]").count() == 0
    assert not [p for p in problems if "CSP" in p or "Refused" in p], problems
    context.close()


def _column_ids(page, status_id: str) -> list[int]:
    return [
        int(c.get_attribute("data-deal-id"))
        for c in page.locator(f'ol[data-status-id="{status_id}"] .ws-card').all()
    ]


def _quiet(page) -> None:
    """Wait until no htmx request is in flight (a poll or a page of cards)."""
    _wait(lambda: page.locator(".htmx-request").count() == 0, timeout=20)


def test_live_refresh_keeps_loaded_pages_notes_and_stage_filter(
    app, live_app, browser, workspace
) -> None:
    from crm_app.extensions import db
    from crm_app.models import Lead, Note

    base, sandbox = live_app.url, live_app.sandbox
    app.config["WORKSPACE_BOARD_PAGE"] = 3  # small pages: the sandbox's columns have several
    context = browser.new_context(viewport={"width": 1000, "height": 600}, locale="ru-RU")
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    _login(page, base, "admin")
    page.goto(f"{base}/admin/crm/deals")
    page.wait_for_selector(".ws-card")

    # A column with a next page: its second page arrives as its end comes into view (at once
    # when the first page does not fill the column, or on scrolling).
    status_id = page.locator(".ws-cards:has(.ws-more)").first.get_attribute("data-status-id")
    column = page.locator(f'ol[data-status-id="{status_id}"]')
    column.locator(".ws-more").scroll_into_view_if_needed()
    _wait(lambda: column.locator(".ws-card").count() > 3, timeout=20)
    _quiet(page)
    assert column.evaluate("el => el.scrollHeight > el.clientHeight + 40")
    top = column.evaluate("el => { el.scrollTop = 40; return el.scrollTop; }")
    # One column sideways (a snap point: the board snaps to column starts).
    left = page.locator("#ws-columns").evaluate(
        "el => { el.scrollLeft = el.children[1].offsetLeft - el.children[0].offsetLeft;"
        " return el.scrollLeft; }"
    )
    assert top == 40 and left > 0
    _quiet(page)
    loaded = _column_ids(page, status_id)
    assert len(loaded) > 3

    # A manager renames a deal of the second page in amoCRM: it arrives, and the loaded cards
    # and both scroll positions stay.
    renamed = loaded[3]
    requests.patch(
        f"{sandbox.url}/_sandbox/leads/{renamed}", json={"name": "Renamed far down"}, timeout=5
    )
    expect(page.locator(f"#deal-{renamed} .ws-card-name")).to_have_text(
        "Renamed far down", timeout=20000
    )
    assert set(loaded) <= set(_column_ids(page, status_id))
    assert _column_ids(page, status_id)[0] == renamed  # the newest change leads the column
    assert column.evaluate("el => el.scrollTop") == top
    assert page.locator("#ws-columns").evaluate("el => el.scrollLeft") == left
    _shot(page, "workspace-board-refreshed")

    # Older notes on the card: 105 notes, the newest 100 first, then the rest on request; a
    # change arriving live keeps them.
    lead_id = loaded[0]
    owner_id = workspace
    for i in range(105):
        db.session.add(
            Note(
                owner_id=owner_id,
                id=800_000_000 + i,
                entity_type="leads",
                entity_id=lead_id,
                note_type="common",
                text=f"Old note {i}",
                created_at=1_700_000_000 + i,
            )
        )
    db.session.commit()
    page.goto(f"{base}/admin/crm/deals/{lead_id}")
    notes = page.locator("#ws-notes .ws-note")
    expect(notes).to_have_count(100)
    page.click("#ws-notes-more a")
    expect(notes).to_have_count(105)
    expect(page.locator("#ws-notes-more")).to_have_count(0)
    expect(page.locator("#ws-notes")).to_contain_text("Old note 0")
    requests.patch(f"{sandbox.url}/_sandbox/leads/{lead_id}", json={"price": 4242}, timeout=5)
    expect(page.locator("#f-price")).to_contain_text("4 242", timeout=20000)
    expect(notes).to_have_count(105)

    # Several stages in the table: tick two, both go into the URL; a bookmark restores them.
    stages = [
        str(s)
        for (s,) in db.session.execute(
            db.select(Lead.status_id).where(Lead.owner_id == owner_id).distinct().limit(2)
        )
    ]
    page.goto(f"{base}/admin/crm/deals/table")
    page.click("#ws-stages summary")
    page.check(f"#stage-{stages[0]}")
    page.wait_for_url(f"**status_id={stages[0]}**", timeout=60000)
    _quiet(page)
    expect(page.locator("#ws-stages")).to_have_attribute("open", "")  # still open to tick more
    expect(page.locator(f"#stage-{stages[0]}")).to_be_focused()
    page.check(f"#stage-{stages[1]}")
    # (page.url can lag behind htmx's pushState: ask the page.)
    _wait(lambda: page.evaluate("() => location.search").count("status_id=") == 2, timeout=30)
    _quiet(page)
    _shot(page, "workspace-table-stages")
    page.goto(page.evaluate("() => location.href"))
    for sid in stages:
        expect(page.locator(f"#stage-{sid}")).to_be_checked()
    expected = db.session.scalar(
        db.select(db.func.count())
        .select_from(Lead)
        .where(Lead.owner_id == owner_id, Lead.status_id.in_([int(s) for s in stages]))
    )
    expect(page.locator("#ws-count")).to_contain_text(str(expected))

    # English and the phone width.
    page.goto(f"{page.url}&lang=en")
    expect(page.locator("#ws-stages-label")).to_have_text("Stages")
    _shot(page, "workspace-table-stages-en")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    mobile = phone.new_page()
    _login(mobile, base, "admin")
    mobile.goto(f"{base}/admin/crm/deals/table")
    mobile.click("#ws-stages summary")
    mobile.check(f"#stage-{stages[0]}")
    mobile.wait_for_url(f"**status_id={stages[0]}**", timeout=60000)
    _shot(mobile, "workspace-table-stages-phone")
    mobile.goto(f"{base}/admin/crm/deals/{lead_id}")
    mobile.click("#ws-notes-more a")
    expect(mobile.locator("#ws-notes .ws-note")).to_have_count(105)
    _shot(mobile, "workspace-deal-notes-phone")
    phone.close()
    assert not problems, problems
    context.close()
