"""The CRM page in a real browser: log in, configure, connect through the consent popup, disconnect."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots are refreshed only on request, so test runs do not churn the tree.
SHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "crm-screenshots"
)

pytestmark = pytest.mark.browser


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_crm_page_connect_flow(app, live_app, browser, make_user, celery_worker) -> None:
    make_user("admin", role="admin", owner="acme")
    sandbox = live_app.sandbox
    has_sync_panel = "sync_ui.start" in app.view_functions
    if has_sync_panel:
        # A real worker runs the sync the panel queues (it copies the app's config).
        celery_worker("browser", concurrency=1)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ru-RU")
    page = context.new_page()
    page.add_init_script("""document.addEventListener('securitypolicyviolation', function (e) {
      var t = e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 120) : String(e.target);
      console.error('CSPDEBUG ' + e.violatedDirective + ' ' + t + ' ' + e.sourceFile + ':' + e.lineNumber);
    });""")
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(
                f"{m.text} @ {m.location.get('url')}:{m.location.get('columnNumber')} url={page.url}"
            )
            if m.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(live_app.url + "/admin/crm")
    assert "/login" in page.url
    _shot(page, "login")
    page.fill("#login-username", "admin")
    page.fill("#login-password", "password123")
    page.click("#login-submit")
    page.wait_for_url("**/admin/crm")
    badge = page.locator("#connection-badge")
    assert "Не подключено" in badge.inner_text()

    # Settings: a pasted account address is split into subdomain and domain.
    page.fill("#f-subdomain", f"https://{sandbox.config.subdomain}.amocrm.ru/")
    page.fill("#f-client-id", sandbox.config.client_id)
    page.fill("#f-client-secret", sandbox.config.client_secret)
    page.click("#save-settings")
    page.wait_for_selector("#settings-saved")
    assert page.input_value("#f-subdomain") == sandbox.config.subdomain
    assert page.input_value("#f-client-secret") == ""  # never rendered back
    assert page.locator("#secret-set").is_visible()
    _shot(page, "crm-disconnected")

    # OAuth popup: get the URL, open the consent page, allow.
    page.click("#get-auth-url")
    connect = page.locator("#connect-amocrm")
    connect.wait_for()
    with page.expect_popup() as popup_info:
        connect.click()
    popup = popup_info.value
    popup.wait_for_load_state()
    assert popup.locator("#allow").is_visible()
    popup.click("#allow")
    popup.wait_for_event("close", timeout=15000)

    # The badge turns green and the account card fills in, without a reload.
    page.wait_for_selector("#connection-badge[data-status='connected']", timeout=15000)
    assert "Подключено" in page.locator("#connection-badge").inner_text()
    page.locator("#account-name").wait_for()
    assert page.locator("#account-name").inner_text().strip() not in ("", "—")
    assert "@" in page.locator("#account-user-email").inner_text()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

    # Pipeline → status dropdowns from the account's real pipelines.
    pipelines = page.locator("#f-lead-pipeline option:not([value=''])")
    assert pipelines.count() >= 1
    pipeline_value = pipelines.nth(pipelines.count() - 1).get_attribute("value")
    page.select_option("#f-lead-pipeline", pipeline_value)
    page.wait_for_selector("#f-lead-status option:not([value=''])", state="attached")
    status_value = page.locator("#f-lead-status option:not([value=''])").first.get_attribute(
        "value"
    )
    page.select_option("#f-lead-status", status_value)
    page.click("#save-settings")
    page.wait_for_selector("#settings-saved")
    assert page.input_value("#f-lead-pipeline") == pipeline_value
    assert page.input_value("#f-lead-status") == status_value

    if has_sync_panel:
        _sync(page)
    _shot(page, "crm-connected")
    _check_funnel(page)
    _check_english(browser, context.storage_state(), live_app.url)

    phone = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        storage_state=context.storage_state(),
    )
    mobile = phone.new_page()
    mobile.goto(live_app.url + "/admin/crm")
    mobile.locator("#connection-badge").wait_for()
    overflow = mobile.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page scrolls sideways on a phone by {overflow}px"
    mobile.screenshot(path=str(SHOTS / "crm-phone.png"))
    mobile.locator("#stats-panel").scroll_into_view_if_needed()
    mobile.screenshot(path=str(SHOTS / "crm-phone-stats.png"))
    _check_funnel(mobile)
    _check_placeholders(mobile)
    phone.close()

    # Disconnect (with the confirmation dialog).
    page.once("dialog", lambda d: d.accept())
    page.click("#disconnect")
    page.wait_for_selector("#connection-badge[data-status='disconnected']", timeout=15000)
    assert "Не подключено" in page.locator("#connection-badge").inner_text()
    context.close()
    csp = [p for p in problems if "Content Security Policy" in p or "Refused" in p]
    assert not csp, "\n".join(problems)
    # Every panel, the lazily loaded ones included, loads without an error.
    assert not problems, "\n".join(problems)


def _sync(page) -> None:
    """Синхронизировать (the sync panel); the statistics, funnel and log follow."""
    button = page.locator("#sync-panel button", has_text="Синхронизировать").first
    button.wait_for()
    if button.is_enabled():
        button.click()
    # sync-finished refreshes the counts, the funnel and the log without a reload.
    expect(page.locator("#stat-contacts")).not_to_have_text("0", timeout=90000)
    expect(page.locator("#stat-leads")).not_to_have_text("0")
    assert page.locator("#funnel .funnel-bar").count() > 0
    expect(page.locator("#sync-log-table")).to_contain_text("Синхронизация контактов")


def _check_funnel(page) -> None:
    """Every stage name has its own place: it never lies over its bar or the count."""
    page.locator("#funnel").scroll_into_view_if_needed()
    overlaps = page.evaluate("""() => [...document.querySelectorAll('#funnel .funnel-row')].map(row => {
        const box = el => el.getBoundingClientRect();
        const [name, bar, count] = ['.funnel-label', '.funnel-bar', '.funnel-count'].map(s => box(row.querySelector(s)));
        const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        return hit(name, bar) || hit(name, count) || hit(bar, count) ? row.textContent.trim() : null;
    }).filter(Boolean)""")
    assert page.locator("#funnel .funnel-row").count() > 0
    assert not overlaps, overlaps


def _check_placeholders(page) -> None:
    """No text field is narrower than its own placeholder (a phone cut them off)."""
    page.locator("#inbound-card").scroll_into_view_if_needed()
    cut = page.evaluate("""() => {
        const ctx = document.createElement('canvas').getContext('2d');
        return [...document.querySelectorAll('input[placeholder]')].filter(i => i.offsetParent).map(i => {
            const style = getComputedStyle(i);
            ctx.font = style.font;
            const room = i.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
            return ctx.measureText(i.placeholder).width > room + 1 ? i.id + ': ' + i.placeholder : null;
        }).filter(Boolean);
    }""")
    assert not cut, cut


def _ui_messages() -> list[str]:
    """The Russian source strings of the interface (the catalog's ids), long enough to be
    unambiguous; none of them may show on the English page."""
    from babel.messages.pofile import read_po

    with open(ROOT / "translations" / "en" / "LC_MESSAGES" / "messages.po", "rb") as fh:
        catalog = read_po(fh)
    ids = [str(m.id[0] if isinstance(m.id, tuple | list) else m.id) for m in catalog if m.id]
    cyrillic = re.compile("[а-яА-ЯёЁ]")
    return [i for i in ids if "%(" not in i and len(i) >= 6 and cyrillic.search(i)]


def _check_english(browser, storage_state, url: str) -> None:
    """The English page (desktop and phone) has every panel in English."""
    messages = _ui_messages()
    for viewport in ({"width": 1280, "height": 900}, {"width": 390, "height": 844}):
        context = browser.new_context(viewport=viewport, storage_state=storage_state)
        page = context.new_page()
        page.goto(url + "/admin/crm?lang=en")
        for panel in ("#sync-card", "#webhooks-card", "#inbound-card", "#sync-log", "#stats-panel"):
            page.locator(panel).wait_for()
        assert page.locator("html").get_attribute("lang") == "en"
        text = page.locator("body").inner_text()
        russian = sorted(m for m in messages if m in text)
        assert not russian, f"Russian on the English page ({viewport['width']}px): {russian}"
        assert "New deal when the previous one is closed" in text
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the English page scrolls sideways by {overflow}px"
        _shot(page, f"crm-en-{viewport['width']}")
        context.close()


def test_a_panel_that_fails_shows_an_error(app, live_app, browser, make_user, monkeypatch) -> None:
    """A 500 from a lazily loaded panel is shown in its place as an error, never hidden."""
    from crm_app.services.webhooks import inbox

    def broken(owner_id: int) -> None:
        raise RuntimeError("the webhook counts are unavailable")

    monkeypatch.setattr(inbox, "counts", broken)
    make_user("admin", role="admin", owner="acme")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(live_app.url + "/login")
    page.fill("#login-username", "admin")
    page.fill("#login-password", "password123")
    page.click("#login-submit")
    page.wait_for_url("**/admin/crm")
    slot = page.locator("#webhooks-panel")
    error = slot.locator("[role=alert]")
    error.wait_for(timeout=15000)
    assert slot.is_visible() and error.is_visible()
    assert "Панель не загрузилась (500)" in error.inner_text()
    assert "the webhook counts" not in page.content()  # the reason stays in the log
    # The other panels load as usual.
    page.locator("#sync-card").wait_for()
    page.locator("#inbound-card").wait_for()
    context.close()
