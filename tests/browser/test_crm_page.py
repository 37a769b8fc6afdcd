"""The CRM page in a real browser: log in, configure, connect through the consent popup, disconnect."""

from __future__ import annotations

import os
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
