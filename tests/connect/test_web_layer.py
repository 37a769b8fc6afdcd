"""The web layer: one request context and one responder behind every page, panel and API route."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.connect.conftest import HX

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PANELS = (
    "/admin/crm/ui/status",
    "/admin/crm/ui/account",
    "/admin/crm/ui/connect",
    "/admin/crm/ui/settings",
    "/admin/crm/ui/stats",
    "/admin/crm/ui/log",
    "/admin/crm/ui/sync",
    "/admin/crm/ui/webhooks",
    "/admin/crm/ui/inbound",
)
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.mark.parametrize("url", PANELS)
def test_a_panel_is_a_fragment_for_htmx_and_a_page_otherwise(
    app, client, make_user, login, url
) -> None:
    make_user("alice", role="admin", owner="acme")
    login("alice")
    piece = client.get(url, headers=HX)
    assert piece.status_code == 200, piece.data[:300]
    assert "<html" not in piece.get_data(as_text=True)
    assert "HX-Request" in piece.headers["Vary"] and piece.headers["Cache-Control"] == "no-store"
    for headers in ({}, {**HX, "HX-Boosted": "true"}, {**HX, "HX-History-Restore-Request": "true"}):
        page = client.get(url, headers=headers)
        assert page.status_code == 200
        assert "<html" in page.get_data(as_text=True), (url, headers)
        assert "HX-Request" in page.headers["Vary"]


def _urls(html: str) -> list[str]:
    return re.findall(r'(?:hx-get|hx-post|action)="([^"]+)"', html)


def test_an_admin_on_another_owner_stays_on_that_owner(app, client, make_user, login) -> None:
    make_user("alice", role="admin", owner="acme")
    other = make_user("bob", role="user", owner="globex").owner_id
    login("alice")
    page = client.get(f"/admin/crm?owner_id={other}").get_data(as_text=True)
    pieces = [
        client.get(f"{u}?owner_id={other}", headers=HX).get_data(as_text=True) for u in PANELS
    ]
    urls = [u for html in [page, *pieces] for u in _urls(html)]
    # Every panel URL, form and poll names the owner; only the owner picker and the sign-out forms do not.
    scoped = [u for u in urls if u not in ("/admin/crm", "/logout", "/logout/everywhere")]
    assert len(scoped) > 15
    assert all(f"owner_id={other}" in u for u in scoped), [
        u for u in scoped if f"owner_id={other}" not in u
    ]
    # A plain form post (no JavaScript) comes back to the same owner's page.
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    resp = client.post(
        f"/admin/crm/ui/webhooks/subscribe?owner_id={other}", data={"csrf_token": token.group(1)}
    )
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"owner_id={other}")


def test_templates_build_no_owner_query_by_hand() -> None:
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        assert "?owner_id=" not in text, path
        assert "owner_query" not in text and "owner_param" not in text, path


def test_sync_log_reads_as_words_while_the_api_keeps_the_data(
    app, client, make_user, login, auth_header
) -> None:
    from crm_app.extensions import db
    from crm_app.models import SyncLog

    owner_id = make_user("alice", role="admin", owner="acme").owner_id
    now = datetime.now(UTC)
    rows = [
        ("sync_contacts", "success", {"run_id": 1, "mode": "full", "records": 40, "pages": 1,
                                      "deleted": 2, "duration_s": 1.5, "filter_ignored": False}),
        ("sync_leads", "success", {"run_id": 2, "mode": "incremental", "records": 0, "pages": 1,
                                   "deleted": 0, "duration_s": 0.2, "filter_ignored": False}),
        ("sync_tasks", "error", {"run_id": 3, "error": "amoCRM answered 502",
                                 "access_token": "tok-secret-value"}),
        ("create_lead", "success", {"channel": "widget", "outcome": "new", "lead_id": 77}),
    ]  # fmt: skip
    for operation, status, details in rows:
        db.session.add(
            SyncLog(
                owner_id=owner_id,
                operation=operation,
                status=status,
                details=details,
                timestamp=now,
            )
        )
    db.session.commit()
    login("alice")
    html = client.get("/admin/crm/ui/log", headers=HX).get_data(as_text=True)
    assert "полная" in html and "удалено 2" not in html
    assert "получено записей: 40, удалено: 2" in html and "1.5 с" in html
    assert "изменений нет" in html
    assert "ошибка: amoCRM answered 502" in html
    assert "виджет сайта" in html and "новый контакт и сделка" in html and "сделка №77" in html
    assert "run_id" not in html and "filter_ignored" not in html
    assert "tok-secret-value" not in html
    api = client.get("/admin/crm/sync/log", headers=auth_header("alice")).json
    by_op = {item["operation"]: item["details"] for item in api["items"]}
    assert by_op["sync_contacts"]["mode"] == "full" and by_op["sync_contacts"]["records"] == 40
    assert by_op["sync_tasks"]["access_token"] == "***"


def test_a_first_run_asked_as_changes_is_called_full(app, client, make_user, login) -> None:
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    owner_id = make_user("alice", role="admin", owner="acme").owner_id
    now = datetime.now(UTC)
    db.session.add(
        SyncRun(
            owner_id=owner_id,
            entities=["contacts"],
            full=False,
            trigger="connect",
            status="success",
            counts={"contacts": {"mode": "full", "records": 5}},
            records=5,
            started_at=now,
            finished_at=now,
        )
    )
    db.session.commit()
    login("alice")
    html = client.get("/admin/crm/ui/sync", headers=HX).get_data(as_text=True)
    last = re.search(r'id="sync-last">(.*?)</p>', html, re.S)
    assert last and "полная" in last.group(1) and "изменения" not in last.group(1)


def test_no_stale_login_banner_after_signing_in(app, client, make_user, login) -> None:
    make_user("alice", role="admin", owner="acme")
    assert client.get("/admin/crm").status_code == 302
    login("alice")
    html = client.get("/admin/crm").get_data(as_text=True)
    assert "Please log in" not in html and 'class="flash flash-' not in html


def test_unknown_admin_url_is_a_page_for_a_browser_and_json_for_a_client(
    app, client, make_user, login
) -> None:
    make_user("alice", role="admin", owner="acme")
    login("alice")
    ru = client.get("/admin/crm/no-such-page", headers=BROWSER)
    assert ru.status_code == 404 and ru.mimetype == "text/html"
    text = ru.get_data(as_text=True)
    assert "Не найдено" in text and "Такой страницы нет" in text
    assert not re.search(r"Not Found|requested URL|server", text)
    en = client.get("/admin/crm/no-such-page?lang=en", headers=BROWSER).get_data(as_text=True)
    main = en.split('<main id="main"', 1)[1]
    assert "Not found" in main and not re.search("[а-яА-Я]", main)
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        api = client.get("/admin/crm/no-such-page", headers=headers)
        assert api.status_code == 404 and api.mimetype == "application/problem+json", headers
    # A known API route answers JSON even to a browser.
    assert client.get("/admin/crm/status", headers=BROWSER).mimetype == "application/json"


def test_inbound_card_shows_words_not_codes(app, client, make_user, login) -> None:
    import uuid

    from crm_app.extensions import db
    from crm_app.models import InboundRequest

    owner_id = make_user("alice", role="admin", owner="acme").owner_id
    db.session.add(
        InboundRequest(
            owner_id=owner_id,
            public_id=str(uuid.uuid4()),
            channel="widget",
            external_id="visitor-1",
            status="created",
            outcome="note",
            lead_id=5,
        )
    )
    db.session.commit()
    login("alice")
    html = client.get("/admin/crm/ui/inbound", headers=HX).get_data(as_text=True)
    row = re.search(r'<tr id="inbound-request-.*?</tr>', html, re.S)
    assert row, html
    cells = re.sub(r"<[^>]+>", "|", row.group(0))
    assert "виджет сайта" in cells and "примечание к сделке" in cells and "создана" in cells
    assert "|widget|" not in cells and "|note|" not in cells and "|created|" not in cells
    assert re.search(
        r'<time datetime="[^"]+" data-local>\d\d\.\d\d\.\d{4} \d\d:\d\d UTC</time>', row.group(0)
    )
