"""OAuth token pairs and the TokenSource protocol the client asks for access tokens."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, SupportsIndex, SupportsInt, runtime_checkable

import jwt

from crm_app.amocrm.errors import AmoCRMAuthError, AmoCRMTokenExpired

logger = logging.getLogger(__name__)

# amoCRM documents a 24 h access token; used only when a response omits expires_in.
DEFAULT_EXPIRES_IN = 86400


def jwt_claims(token: str) -> dict[str, Any]:
    """Decode a JWT's claims WITHOUT verifying it; ``{}`` for a token that is not a JWT.

    We never trust these claims for security: they only tell us the account id and the shared
    API host, and the token itself is checked by amoCRM on every call.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _int_or_none(value: object) -> int | None:
    if not isinstance(value, str | bytes | SupportsInt | SupportsIndex):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _mask(token: str | None) -> str:
    return "None" if token is None else f"<{len(token)} chars>"


@dataclass(frozen=True)
class TokenSet:
    """One access/refresh pair as issued by the token endpoint; repr never shows tokens."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime
    token_type: str = "Bearer"
    api_domain: str | None = None
    account_id: int | None = None

    @classmethod
    def from_response(cls, data: Mapping[str, Any], now: datetime | None = None) -> TokenSet:
        """Build from the token endpoint's JSON; ``now`` (UTC) anchors ``expires_in``."""
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("token response has no access_token")
        refresh = data.get("refresh_token")
        now = now or datetime.now(UTC)
        expires_in = _int_or_none(data.get("expires_in"))
        if expires_in is None:
            expires_in = DEFAULT_EXPIRES_IN
        claims = jwt_claims(access)
        return cls(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=now + timedelta(seconds=expires_in),
            token_type=str(data.get("token_type") or "Bearer"),
            api_domain=_str_or_none(claims.get("api_domain")),
            account_id=_int_or_none(claims.get("account_id")),
        )

    @classmethod
    def from_access_token(cls, access_token: str, now: datetime | None = None) -> TokenSet:
        """Wrap a long-lived token (no refresh token); expiry comes from its ``exp`` claim."""
        claims = jwt_claims(access_token)
        exp = _int_or_none(claims.get("exp"))
        if exp is not None:
            expires_at = datetime.fromtimestamp(exp, UTC)
        else:
            expires_at = (now or datetime.now(UTC)) + timedelta(days=365 * 5)
        return cls(
            access_token=access_token,
            refresh_token=None,
            expires_at=expires_at,
            api_domain=_str_or_none(claims.get("api_domain")),
            account_id=_int_or_none(claims.get("account_id")),
        )

    def expires_within(self, seconds: float, now: datetime | None = None) -> bool:
        """True if the access token expires within ``seconds`` from ``now``."""
        now = now or datetime.now(UTC)
        return self.expires_at <= now + timedelta(seconds=seconds)

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={_mask(self.access_token)}, "
            f"refresh_token={_mask(self.refresh_token)}, expires_at={self.expires_at.isoformat()}, "
            f"token_type={self.token_type!r}, api_domain={self.api_domain!r}, "
            f"account_id={self.account_id!r})"
        )

    __str__ = __repr__


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@runtime_checkable
class TokenSource(Protocol):
    """Supplies access tokens to the client and renews them after a 401."""

    def access_token(self) -> str:
        """The access token to send now."""
        ...

    def refresh(self, rejected: str) -> str:
        """Called once after a 401 with the token that was rejected; return a fresh one.

        If the stored token already differs from ``rejected`` (another worker refreshed), return
        the stored one without refreshing again. Raise when no fresh token can be had.
        """
        ...


class StaticTokenSource:
    """A long-lived token: nothing to refresh, so a 401 means it expired or was revoked."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self._token = token

    def access_token(self) -> str:
        """Return the long-lived token."""
        return self._token

    def refresh(self, rejected: str) -> str:
        """Always raise AmoCRMTokenExpired: a long-lived token cannot be renewed."""
        raise AmoCRMTokenExpired("the long-lived access token was rejected", status=401)

    def __repr__(self) -> str:
        return f"StaticTokenSource(token={_mask(self._token)})"


class TokenRefresher(Protocol):
    """What a refreshing source needs from OAuthClient: one refresh_token grant."""

    def refresh_tokens(self, refresh_token: str) -> TokenSet: ...


class RefreshingTokenSource:
    """An in-memory, thread-safe token pair that refreshes through OAuthClient.

    ``on_tokens`` receives every NEW pair before it is used: amoCRM refresh tokens are single
    use, so a pair that is used but never stored would lock the integration out. This class
    only serialises threads of one process; the app's DB-backed source does cross-process locks.
    """

    def __init__(
        self,
        oauth: TokenRefresher,
        tokens: TokenSet,
        on_tokens: Callable[[TokenSet], None],
        *,
        refresh_margin: float = 60.0,
    ) -> None:
        self._oauth = oauth
        self._tokens = tokens
        self._on_tokens = on_tokens
        self._refresh_margin = refresh_margin
        self._lock = threading.Lock()

    @property
    def tokens(self) -> TokenSet:
        """The current pair."""
        return self._tokens

    def access_token(self) -> str:
        """The current access token, refreshed first if it is about to expire."""
        current = self._tokens
        if current.refresh_token and current.expires_within(self._refresh_margin):
            return self.refresh(current.access_token)
        return current.access_token

    def refresh(self, rejected: str) -> str:
        """Refresh unless another thread already replaced ``rejected``; return the new token."""
        with self._lock:
            current = self._tokens
            if current.access_token != rejected:
                return current.access_token
            if not current.refresh_token:
                raise AmoCRMTokenExpired("no refresh token to renew the access token", status=401)
            try:
                new = self._oauth.refresh_tokens(current.refresh_token)
            except AmoCRMAuthError as exc:
                logger.warning(
                    "amoCRM token refresh refused (status %s, hint %r)", exc.status, exc.hint
                )
                raise
            # Persist first, publish second: no thread may use a pair that is not stored yet.
            # The old refresh token is spent either way, so the new pair is kept in memory even
            # if storing it fails; the caller still hears about that failure.
            try:
                self._on_tokens(new)
            finally:
                self._tokens = new
            logger.info("amoCRM tokens refreshed; new access token expires at %s", new.expires_at)
            return new.access_token

    def __repr__(self) -> str:
        return f"RefreshingTokenSource(tokens={self._tokens!r})"
