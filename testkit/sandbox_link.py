"""Connect an owner to a running amoCRM sandbox account without a browser."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests
from flask import current_app
from sqlalchemy import select

from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.extensions import db
from crm_app.models import AmoConfig, ConnectionStatus
from crm_app.services.tokens import save_tokens

if TYPE_CHECKING:
    from crm_app.sandbox import SandboxServer


def connect_owner_to_sandbox(
    owner_id: int,
    server: SandboxServer,
    *,
    account: Any = None,
    user_id: int | None = None,
    **cfg_values: Any,
) -> AmoConfig:
    """Point the app at `server`, write a matching AmoConfig, and store tokens from a real code.

    Unlike `connection.connect_with_code` this runs no after-connect work (account card, webhook
    subscription, first sync), so a test or benchmark decides what happens next. `account` is a
    sandbox account or subdomain (default: the first); `user_id` the amoCRM user who grants.
    """
    current_app.config["AMOCRM_BASE_URL"] = server.url
    acc = server.sandbox.find_account(account) if account is not None else server.account
    if acc is None:
        raise ValueError(f"the sandbox has no account {account!r}")
    sb = server.config
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is None:
        cfg = AmoConfig(owner_id=owner_id)
        db.session.add(cfg)
    values: dict[str, Any] = {
        "subdomain": acc.subdomain,
        "domain": sb.base_domain,
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "redirect_uri": sb.redirect_uri,
        "status": ConnectionStatus.CONNECTED,
        "account_id": acc.id,
        **cfg_values,
    }
    for key, value in values.items():
        setattr(cfg, key, value)
    db.session.commit()
    body: dict[str, Any] = {"client_id": sb.client_id, "account": acc.subdomain}
    if user_id is not None:
        body["user_id"] = user_id
    code = requests.post(f"{server.url}/_sandbox/auth-code", json=body, timeout=5).json()["code"]
    hosts = AmoHosts(acc.subdomain, sb.base_domain, base_url=server.url)
    oauth = OAuthClient(hosts, sb.client_id, sb.client_secret, sb.redirect_uri)
    save_tokens(owner_id, oauth.exchange_code(code))
    return cfg
