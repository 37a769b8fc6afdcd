"""OAuth state: integrations, authorization codes, access JWTs and rotating refresh tokens."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from crm_app.sandbox import errors
from crm_app.sandbox.config import SandboxConfig

HINT_CODE_EXPIRED = "Authorization code has expired"
HINT_CODE_REVOKED = "Authorization code has been revoked"
HINT_CODE_MALFORMED = "Cannot decrypt the authorization code"
HINT_CODE_OTHER_CLIENT = "Authorization code was not issued to this client"
HINT_CLIENT_ID = "Check the `client_id` parameter"
HINT_CLIENT_SECRET = "Check the `client_secret` parameter"
HINT_REDIRECT = "Redirect URI is not associated with client"
HINT_INVALID_ACCOUNT = "Invalid account"
HINT_TOKEN_REVOKED = "Token has been revoked"
HINT_TOKEN_EXPIRED = "Token has expired"
HINT_TOKEN_MALFORMED = "Cannot decrypt the refresh token"
HINT_TOKEN_OTHER_CLIENT = "Token is not linked to client"


class OAuthError(Exception):
    def __init__(self, status: int, hint: str, client_error: bool = False) -> None:
        super().__init__(hint)
        self.status = status
        self.hint = hint
        self.client_error = client_error  # may be rendered as the hint-less "Некорректный клиент"


@dataclass
class Integration:
    client_id: str
    client_secret: str
    redirect_uri: str
    name: str
    disconnect_url: str | None = None
    account_ids: list[int] | None = None  # None: installable in every account
    scopes: list[str] = field(default_factory=lambda: ["crm", "notifications"])

    def public(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uri": self.redirect_uri,
            "name": self.name,
            "disconnect_url": self.disconnect_url,
            "account_ids": self.account_ids,
            "scopes": self.scopes,
        }


@dataclass
class Code:
    code: str
    client_id: str
    account_id: int
    user_id: int
    expires_at: int
    used: bool = False


@dataclass
class AccessToken:
    token: str
    jti: str
    client_id: str
    account_id: int
    user_id: int
    issued_at: int
    expires_at: int
    long_lived: bool = False
    revoked: bool = False


@dataclass
class RefreshToken:
    token: str
    client_id: str
    account_id: int
    user_id: int
    expires_at: int
    parent: str | None = None
    used: bool = False
    child_used: bool = False
    revoked: bool = False


class TokenStore:
    """Everything the token endpoint and the API authentication need, behind one lock."""

    def __init__(self, config: SandboxConfig, now: Callable[[], int]) -> None:
        self.config = config
        self.now = now
        self.integrations: dict[str, Integration] = {}
        self.codes: dict[str, Code] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.signing_key = secrets.token_bytes(48)
        self.lock = threading.Lock()

    # --- integrations -----------------------------------------------------------------
    def register(self, integration: Integration) -> Integration:
        with self.lock:
            self.integrations[integration.client_id] = integration
        return integration

    def integration(self, client_id: Any) -> Integration | None:
        return self.integrations.get(client_id) if isinstance(client_id, str) else None

    # --- codes ------------------------------------------------------------------------
    def issue_code(self, client_id: str, account_id: int, user_id: int) -> Code:
        # Real codes are long opaque strings (league/oauth2 encrypted payloads, "def50200…").
        code = Code(
            "def50200" + secrets.token_hex(160),
            client_id,
            account_id,
            user_id,
            self.now() + self.config.code_ttl,
        )
        with self.lock:
            self.codes[code.code] = code
        return code

    def check_client(self, params: dict[str, Any], require_redirect: bool) -> Integration:
        integration = self.integration(params.get("client_id"))
        if integration is None:
            raise OAuthError(400, HINT_CLIENT_ID, client_error=True)
        if params.get("client_secret") != integration.client_secret:
            raise OAuthError(400, HINT_CLIENT_SECRET, client_error=True)
        redirect = params.get("redirect_uri")
        if (require_redirect or redirect is not None) and redirect != integration.redirect_uri:
            # Exact match, trailing slash included (https://www.amocrm.ru/developers/content/oauth/step-by-step).
            raise OAuthError(400, HINT_REDIRECT, client_error=True)
        return integration

    def exchange_code(self, params: dict[str, Any]) -> tuple[Code, dict[str, Any]]:
        integration = self.check_client(params, require_redirect=True)
        raw = params.get("code")
        if not isinstance(raw, str) or not raw:
            raise OAuthError(400, "Check the `code` parameter")
        with self.lock:
            code = self.codes.get(raw)
            if code is None:
                raise OAuthError(400, HINT_CODE_MALFORMED)
            if code.client_id != integration.client_id:
                raise OAuthError(400, HINT_CODE_OTHER_CLIENT)
            if code.used:
                raise OAuthError(400, HINT_CODE_REVOKED)
            if self.now() >= code.expires_at:
                raise OAuthError(400, HINT_CODE_EXPIRED)
            code.used = True
        return code, self.issue_pair(code.client_id, code.account_id, code.user_id)

    # --- refresh ----------------------------------------------------------------------
    def use_refresh(self, params: dict[str, Any]) -> tuple[RefreshToken, dict[str, Any]]:
        integration = self.check_client(params, require_redirect=False)
        raw = params.get("refresh_token")
        if not isinstance(raw, str) or not raw:
            raise OAuthError(400, "Check the `refresh_token` parameter")
        with self.lock:
            token = self.refresh.get(raw)
            if token is None:
                raise OAuthError(401, HINT_TOKEN_MALFORMED)
            if token.client_id != integration.client_id:
                raise OAuthError(401, HINT_TOKEN_OTHER_CLIENT)
            if token.revoked:
                raise OAuthError(401, HINT_TOKEN_REVOKED)
            if token.used and (not self.config.refresh_grace or token.child_used):
                # amoCRM: strictly single use. Kommo: the old one works until the new one is used.
                raise OAuthError(401, HINT_TOKEN_REVOKED)
            if self.now() >= token.expires_at:
                raise OAuthError(401, HINT_TOKEN_EXPIRED)
            token.used = True
            if token.parent is not None and token.parent in self.refresh:
                parent = self.refresh[token.parent]
                parent.child_used = True
                parent.revoked = True
        pair = self.issue_pair(token.client_id, token.account_id, token.user_id, parent=raw)
        return token, pair

    def find_refresh(self, raw: str | None) -> RefreshToken | None:
        token = self.refresh.get(raw or "")
        if token is None or token.revoked or self.now() >= token.expires_at:
            return None
        return token

    # --- issuing ----------------------------------------------------------------------
    def _jwt(self, client_id: str, account_id: int, user_id: int, ttl: int) -> AccessToken:
        now = self.now()
        jti = str(uuid.uuid4())
        integration = self.integrations.get(client_id)
        claims = {
            "aud": client_id,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "sub": str(user_id),
            "grant_type": "",
            "account_id": account_id,
            "base_domain": self.config.base_domain,
            "version": 2,
            "scopes": integration.scopes if integration else ["crm"],
            "hash_uuid": str(uuid.uuid4()),
            "api_domain": self.config.api_domain,
            "client_uuid": client_id,
            "user_id": user_id,
        }
        token = jwt.encode(claims, self.signing_key, algorithm="HS256")
        return AccessToken(token, jti, client_id, account_id, user_id, now, now + ttl)

    def issue_pair(
        self, client_id: str, account_id: int, user_id: int, parent: str | None = None
    ) -> dict[str, Any]:
        access = self._jwt(client_id, account_id, user_id, self.config.access_ttl)
        refresh = RefreshToken(
            "def50200" + secrets.token_hex(256),
            client_id,
            account_id,
            user_id,
            self.now() + self.config.refresh_ttl,
            parent=parent,
        )
        with self.lock:
            self.access[access.token] = access
            self.refresh[refresh.token] = refresh
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.config.access_ttl}
        if self.config.server_time:
            body["server_time"] = self.now()
        body["access_token"] = access.token
        body["refresh_token"] = refresh.token
        return body

    def issue_long_lived(
        self, client_id: str, account_id: int, user_id: int, days: int
    ) -> AccessToken:
        """Long-lived tokens (1 day … 5 years) carry admin rights and have no refresh token."""
        access = self._jwt(client_id, account_id, user_id, days * 86400)
        access.long_lived = True
        with self.lock:
            self.access[access.token] = access
        return access

    # --- checking and revoking --------------------------------------------------------
    def authenticate(self, raw: str | None) -> AccessToken | None:
        token = self.access.get(raw or "")
        if token is None or token.revoked or self.now() >= token.expires_at:
            return None
        return token

    def expire_all(self) -> int:
        """Every access token stops working now (refresh tokens are untouched)."""
        now = self.now()
        count = 0
        with self.lock:
            for token in self.access.values():
                if token.expires_at > now:
                    token.expires_at = now
                    count += 1
        return count

    def revoke(self, client_id: str, account_id: int | None = None) -> int:
        count = 0
        with self.lock:
            tokens: list[AccessToken | RefreshToken] = [
                *self.access.values(),
                *self.refresh.values(),
            ]
            for item in tokens:
                if item.client_id == client_id and account_id in (None, item.account_id):
                    if not item.revoked:
                        count += 1
                    item.revoked = True
        return count


def error_response(exc: OAuthError, style: str) -> Any:
    if exc.client_error and style == "invalid_client":
        return errors.oauth_invalid_client()
    return errors.oauth_problem(exc.status, exc.hint)
