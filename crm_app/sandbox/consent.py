"""The HTML consent page (/oauth) in Russian, laid out like amoCRM's: account picker, two buttons."""

from __future__ import annotations

from html import escape

from crm_app.sandbox.store import Account

STYLE = """
body{margin:0;font-family:"PT Sans",Arial,sans-serif;background:#f5f5f5;color:#313942}
header{background:#1e2a33;color:#fff;padding:14px 24px;font-size:20px;font-weight:bold}
header span{color:#4c8bf7}
main{max-width:520px;margin:48px auto;background:#fff;border-radius:4px;
box-shadow:0 1px 4px rgba(0,0,0,.15);padding:32px}
h1{font-size:22px;margin:0 0 8px} p{line-height:1.5}
ul{padding-left:20px;line-height:1.6} label{display:block;margin:16px 0 6px;font-weight:bold}
select{width:100%;padding:8px;font-size:15px}
.actions{display:flex;gap:12px;margin-top:24px}
button{font-size:15px;padding:10px 22px;border-radius:3px;cursor:pointer}
#allow{background:#4c8bf7;color:#fff;border:1px solid #4c8bf7}
#deny{background:#fff;color:#313942;border:1px solid #c7c9cb}
.error{color:#d1453b}
"""


def _page(title: str, content: str) -> str:
    return (
        '<!doctype html><html lang="ru"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        "<header>amo<span>CRM</span></header>"
        f"<main>{content}</main></body></html>"
    )


def consent_page(
    integration_name: str,
    client_id: str,
    state: str | None,
    mode: str | None,
    accounts: list[Account],
    domain: str,
) -> str:
    hidden = f'<input type="hidden" name="client_id" value="{escape(client_id)}">'
    if state is not None:
        hidden += f'<input type="hidden" name="state" value="{escape(state)}">'
    if mode:
        hidden += f'<input type="hidden" name="mode" value="{escape(mode)}">'
    options = "".join(
        f'<option value="{escape(a.subdomain)}">{escape(a.name)} — {escape(a.subdomain)}.{escape(domain)}'
        "</option>"
        for a in accounts
    )
    content = (
        "<h1>Предоставить доступ</h1>"
        f'<p>Интеграция <b id="integration-name">«{escape(integration_name)}»</b> '
        "запрашивает доступ к вашему аккаунту.</p>"
        "<p>Интеграция получит право:</p>"
        "<ul><li>Доступ к данным аккаунта (сделки, контакты, задачи)</li>"
        "<li>Центр уведомлений</li></ul>"
        '<form method="post" action="/oauth/decision" id="allow-form">'
        f"{hidden}"
        '<label for="account">Аккаунт</label>'
        f'<select name="account" id="account">{options}</select>'
        '<div class="actions">'
        '<button type="submit" name="decision" value="allow" id="allow">Разрешить</button>'
        '<button type="submit" name="decision" value="deny" id="deny" form="deny-form">'
        "Отказаться</button></div></form>"
        f'<form method="post" action="/oauth/decision" id="deny-form">{hidden}'
        '<input type="hidden" name="decision" value="deny"></form>'
    )
    return _page("Предоставление доступа — amoCRM", content)


def error_page(message: str) -> str:
    return _page("Ошибка — amoCRM", f'<h1 class="error">Ошибка</h1><p>{escape(message)}</p>')
