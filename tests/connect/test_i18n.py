"""Russian by default; English through ?lang=en (Flask-Babel), remembered in the session."""

from __future__ import annotations

from tests.connect.conftest import HX


def test_page_in_russian_then_english(app, client, owner, login, page_csrf) -> None:
    login("alice")
    ru = client.get("/admin/crm").get_data(as_text=True)
    assert '<html lang="ru">' in ru and "Настройки" in ru and "Не подключено" in ru
    en = client.get("/admin/crm?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in en
    for text in ("Settings", "Not connected", "Sync log", "Statistics", "amoCRM account"):
        assert text in en, text
    assert "Настройки" not in en
    # The choice sticks for the partials and for validation messages.
    resp = client.post(
        "/admin/crm/ui/settings",
        data={"csrf_token": page_csrf(), "subdomain": "bad host"},
        headers=HX,
    )
    assert resp.status_code == 422
    assert "subdomain: Latin letters" in resp.get_data(as_text=True)
    assert "Sign in" in client.get("/login?lang=en").get_data(as_text=True)
