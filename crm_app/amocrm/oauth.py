"""OAuth 2.0 against amoCRM's token endpoint: code exchange, refresh, subdomain discovery."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import requests

from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMRateLimited,
    AmoCRMUnavailable,
)
from crm_app.amocrm.hosts import AmoHosts, split_referer
from crm_app.amocrm.throttle import Throttle
from crm_app.amocrm.tokens import TokenSet
from crm_app.amocrm.transport import (
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    Timeout,
    decode_problem,
    make_session,
    problem_summary,
    proxies_for,
)

logger = logging.getLogger(__name__)


class OAuthClient:
    """Talks to ``{account}/oauth2/access_token`` for one integration and one account.

    Token requests are never retried automatically: a refresh that reached amoCRM but whose
    answer was lost has already spent the single-use refresh token, so a blind resend would only
    earn "Token has been revoked". The caller decides what to do with AmoCRMUnavailable.
    """

    def __init__(
        self,
        hosts: AmoHosts,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        session: requests.Session | None = None,
        proxy: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        *,
        throttle: Throttle | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self.hosts = hosts
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.session = make_session(session)
        self.proxies = proxies_for(proxy)
        self.timeout = timeout
        self.throttle = throttle
        self.user_agent = user_agent

    def __repr__(self) -> str:
        return f"OAuthClient(account={self.hosts.account_host!r}, client_id={self.client_id!r})"

    def exchange_code(self, code: str) -> TokenSet:
        """Trade an authorization code (20 min, single use) for a token pair."""
        if not code:
            raise ValueError("authorization code must not be empty")
        body = self._grant_body("authorization_code", code=code)
        return self._token_request(body, "authorization_code", secret=code)

    def refresh_tokens(self, refresh_token: str) -> TokenSet:
        """Trade a refresh token for a NEW pair; the old refresh token is spent afterwards."""
        if not refresh_token:
            raise ValueError("refresh token must not be empty")
        body = self._grant_body("refresh_token", refresh_token=refresh_token)
        return self._token_request(body, "refresh_token", secret=refresh_token)

    def current_subdomain(self, refresh_token: str, api_domain: str) -> dict[str, Any]:
        """Ask which subdomain the account has now (it can be renamed).

        https://www.amocrm.ru/developers/content/oauth/account-subdomain-info

        ``api_domain`` is the JWT claim (``api-b.amocrm.ru``). Returns amoCRM's
        ``{"id", "subdomain", "domain", "top_level_domain"}``.
        """
        url = self.hosts.subdomain_lookup_url(api_domain)
        headers = {"X-Refresh-Token": refresh_token}
        response = self._send("GET", url, headers=headers, json_body=None)
        if response.status_code != 200:
            self._raise(response, "subdomain lookup", secret=refresh_token)
        data = self._json(response, "subdomain lookup")
        if not isinstance(data.get("subdomain"), str):
            raise AmoCRMAuthError("subdomain lookup returned an unexpected body", status=200)
        return data

    def current_hosts(self, refresh_token: str, api_domain: str) -> AmoHosts:
        """AmoHosts for the account's current subdomain (keeps any base URL override)."""
        info = self.current_subdomain(refresh_token, api_domain)
        domain = info.get("domain")
        if isinstance(domain, str) and "." in domain:
            sub, dom = split_referer(domain)
            return self.hosts.with_account(sub, dom)
        return self.hosts.with_account(str(info["subdomain"]))

    # -- internals -------------------------------------------------------------------------

    def _grant_body(self, grant_type: str, **extra: str) -> dict[str, str]:
        # The docs send JSON; redirect_uri must match the integration's setting to the byte.
        return {
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "grant_type": grant_type,
            **extra,
            "redirect_uri": self.redirect_uri,
        }

    def _token_request(self, body: dict[str, str], grant: str, secret: str) -> TokenSet:
        response = self._send("POST", self.hosts.token_url, headers={}, json_body=body)
        if response.status_code not in (200, 201):
            self._raise(response, f"{grant} grant", secret=secret)
        data = self._json(response, f"{grant} grant")
        try:
            tokens = TokenSet.from_response(data, now=datetime.now(UTC))
        except ValueError as exc:
            raise AmoCRMAuthError(
                f"token endpoint answered the {grant} grant without an access token",
                status=response.status_code,
            ) from exc
        logger.info(
            "amoCRM %s grant succeeded for %s (account_id %s)",
            grant,
            self.hosts.account_host,
            tokens.account_id,
        )
        return tokens

    def _send(
        self, method: str, url: str, *, headers: dict[str, str], json_body: Any
    ) -> requests.Response:
        if self.throttle is not None:
            self.throttle.acquire(self.hosts.throttle_key)
        all_headers = {"User-Agent": self.user_agent, "Accept": "application/json", **headers}
        try:
            return self.session.request(
                method,
                url,
                json=json_body,
                headers=all_headers,
                timeout=self.timeout,
                proxies=self.proxies,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise AmoCRMUnavailable("amoCRM token endpoint timed out") from exc
        except requests.RequestException as exc:
            # Only the class name: the text of proxy errors can include proxy credentials.
            raise AmoCRMUnavailable(
                f"amoCRM token endpoint unreachable ({type(exc).__name__})"
            ) from exc

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AmoCRMAuthError(f"{what} returned a non-JSON body", status=response.status_code)
        return data

    def _raise(self, response: requests.Response, what: str, secret: str) -> None:
        status = response.status_code
        problem = decode_problem(response)
        secrets = (self._client_secret, secret)
        if status == 403 and problem is None:
            raise AmoCRMBlocked(f"{what}: amoCRM blocked the request (HTTP 403)", from_gateway=True)
        if status == 429:
            raise AmoCRMRateLimited(f"{what}: rate limited (HTTP 429)", problem=problem)
        if status >= 500:
            raise AmoCRMUnavailable(f"{what}: amoCRM server error (HTTP {status})", status=status)
        if 300 <= status < 400:
            raise AmoCRMAPIError(f"{what}: unexpected redirect (HTTP {status})", status=status)
        hint = problem.get("hint") if problem else None
        hint = hint if isinstance(hint, str) else None
        reason = hint or problem_summary(problem)
        raise AmoCRMAuthError(
            f"{what} refused (HTTP {status}): {reason}",
            status=status,
            problem=problem,
            hint=hint,
            secrets=secrets,
        )
