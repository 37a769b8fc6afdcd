"""OAuth endpoints: consent page, token endpoint, subdomain lookups.

As documented at https://www.amocrm.ru/developers/content/oauth/step-by-step and
https://www.amocrm.ru/developers/content/oauth/account-subdomain-info.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from crm_app.sandbox import common, errors, limits
from crm_app.sandbox.consent import consent_page, error_page
from crm_app.sandbox.oauth import HINT_INVALID_ACCOUNT, OAuthError, error_response
from crm_app.sandbox.store import Account

bp = Blueprint("sandbox_oauth", __name__)


def _allowed_accounts(client_id: str) -> list[Account]:
    sb = common.sandbox()
    integration = sb.tokens.integration(client_id)
    if integration is None:
        return []
    if integration.account_ids is None:
        return list(sb.accounts)
    return [a for a in sb.accounts if a.id in integration.account_ids]


@bp.get("/oauth")
def consent() -> Response:
    sb = common.sandbox()
    client_id = request.args.get("client_id", "")
    g.client_id = client_id or None
    integration = sb.tokens.integration(client_id)
    if integration is None:
        html = error_page("Интеграция не найдена. Проверьте параметр client_id.")
        return Response(html, status=400, content_type="text/html; charset=utf-8")
    html = consent_page(
        integration.name,
        client_id,
        request.args.get("state"),
        request.args.get("mode"),
        _allowed_accounts(client_id),
        sb.domain,
    )
    return Response(html, content_type="text/html; charset=utf-8")


@bp.post("/oauth/decision")
def decision() -> BaseResponse:
    """Allow → redirect with code, state, referer, platform, client_id; deny → access_denied."""
    sb = common.sandbox()
    form = request.form
    client_id = form.get("client_id", "")
    integration = sb.tokens.integration(client_id)
    if integration is None:
        html = error_page("Интеграция не найдена.")
        return Response(html, status=400, content_type="text/html; charset=utf-8")
    g.client_id = client_id
    state = form.get("state")
    if form.get("decision") != "allow":
        params: list[tuple[str, str]] = [("error", "access_denied")]
        if state is not None:
            params.append(("state", state))
        params.append(("client_id", client_id))
        return redirect(_with_query(integration.redirect_uri, params), code=302)
    allowed = _allowed_accounts(client_id)
    chosen = (
        sb.find_account(form.get("account"))
        if form.get("account")
        else (allowed[0] if allowed else None)
    )
    if chosen is None or chosen not in allowed:
        html = error_page("Аккаунт недоступен для этой интеграции.")
        return Response(html, status=400, content_type="text/html; charset=utf-8")
    g.account = chosen
    code = sb.tokens.issue_code(client_id, chosen.id, chosen.admin.id)
    params = [("code", code.code)]
    if state is not None:
        params.append(("state", state))  # omitted when the authorize URL had none
    params += [
        ("referer", f"{chosen.subdomain}.{sb.domain}"),  # a bare host, no scheme
        ("platform", "1" if sb.domain.endswith(".ru") else "2"),
        ("client_id", client_id),
    ]
    return redirect(_with_query(integration.redirect_uri, params), code=302)


def _with_query(uri: str, params: list[tuple[str, str]]) -> str:
    joiner = "&" if "?" in uri else "?"
    return f"{uri}{joiner}{urlencode(params)}"


def _token_params() -> dict[str, Any]:
    """JSON or form-encoded: the token endpoint accepts both."""
    raw = request.get_data(cache=True)
    if raw.strip().startswith(b"{"):
        try:
            body = json.loads(raw)
            if isinstance(body, dict):
                return body
        except ValueError:
            pass
    return request.form.to_dict()


@bp.post("/oauth2/access_token")
def access_token() -> Response:
    sb = common.sandbox()
    params = _token_params()
    g.client_id = params.get("client_id") if isinstance(params.get("client_id"), str) else None
    grant = params.get("grant_type")
    account = _account_of_grant(params)
    if account is not None:
        g.account = account
        if sb.limiter.is_blocked(account.id):
            return limits.forbidden(sb.config)  # blocks hold on the token endpoint too
        host_sub = request.host.split(":")[0].split(".")[0].lower()
        other = sb.find_account(host_sub) if host_sub and host_sub != account.subdomain else None
        if other is not None and other is not account:
            return errors.oauth_problem(400, HINT_INVALID_ACCOUNT)
    try:
        if grant == "authorization_code":
            _code, body = sb.tokens.exchange_code(params)
        elif grant == "refresh_token":
            _token, body = sb.tokens.use_refresh(params)
        else:
            return errors.oauth_problem(400, "Check the `grant_type` parameter")
    except OAuthError as exc:
        return error_response(exc, sb.config.oauth_client_errors)
    return errors.json_response(body)


def _account_of_grant(params: dict[str, Any]) -> Account | None:
    sb = common.sandbox()
    account_id = None
    code = (
        sb.tokens.codes.get(params.get("code") or "")
        if isinstance(params.get("code"), str)
        else None
    )
    if code is not None:
        account_id = code.account_id
    token = params.get("refresh_token")
    if isinstance(token, str) and token in sb.tokens.refresh:
        account_id = sb.tokens.refresh[token].account_id
    if account_id is None:
        return None
    return sb.account_by_id(account_id)


def _subdomain_body(account: Account) -> Response:
    sb = common.sandbox()
    body = {
        "id": account.id,
        "subdomain": account.subdomain,
        "domain": f"{account.subdomain}.{sb.domain}",
        "top_level_domain": sb.domain.rsplit(".", 1)[-1],
    }
    return errors.json_response(body)


@bp.get("/oauth2/account/current/subdomain")
def current_subdomain() -> Response:
    """Current lookup: the refresh token in X-Refresh-Token names the account."""
    sb = common.sandbox()
    token = sb.tokens.find_refresh(request.headers.get("X-Refresh-Token"))
    if token is None:
        return errors.oauth_problem(401, "Token has been revoked")
    account = sb.account_by_id(token.account_id)
    g.account, g.client_id = account, token.client_id
    return _subdomain_body(account)


@bp.get("/oauth2/account/subdomain")
def legacy_subdomain() -> Response:
    """The deprecated lookup by Bearer access token."""
    sb = common.sandbox()
    header = request.headers.get("Authorization", "")
    raw = header[7:].strip() if header[:7].lower() == "bearer " else None
    token = sb.tokens.authenticate(raw)
    if token is None:
        return errors.unauthorized(sb.config.unauthorized_lang)
    account = sb.account_by_id(token.account_id)
    g.account, g.client_id = account, token.client_id
    return _subdomain_body(account)
