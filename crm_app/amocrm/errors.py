"""Exceptions raised by the amoCRM client; their text never carries tokens or secrets."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Anything shaped like a JWT (amoCRM access tokens are JWTs) is cut out of messages, so even a
# server that echoes a token back cannot make us print it.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_REDACTED = "[redacted]"


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with JWT-like strings and the given secret values replaced."""
    # Longest first, so a secret that contains another is removed whole. Very short values are
    # skipped: no real secret is that short, and replacing them would mangle ordinary words.
    for secret in sorted((s for s in secrets if s and len(s) >= 8), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return _JWT_RE.sub(_REDACTED, text)


class AmoCRMConfigError(ValueError):
    """Bad subdomain, domain, base URL or other host input: nothing was sent."""


class AmoCRMAPIError(Exception):
    """An amoCRM request failed.

    ``status`` is the HTTP status (None when no response arrived), ``problem`` the decoded
    problem+json body (empty when the body was not JSON), ``message`` a safe summary.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.message = scrub(message, secrets)
        self.status = status
        self.problem: dict[str, Any] = problem if isinstance(problem, dict) else {}
        super().__init__(self.message)

    @property
    def detail(self) -> str | None:
        """The problem body's ``detail`` (or ``title``), if any."""
        value = self.problem.get("detail") or self.problem.get("title")
        return str(value) if value is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class AmoCRMTokenExpired(AmoCRMAPIError):
    """A 401 that a token refresh could not fix (or a long-lived token was rejected)."""


class AmoCRMAuthError(AmoCRMAPIError):
    """The OAuth token endpoint refused a grant; ``hint`` holds amoCRM's reason."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
        hint: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        super().__init__(message, status=status, problem=problem, secrets=secrets)
        self.hint = scrub(hint, secrets) if hint else None
        self._revoked = hint == "Token has been revoked"

    @property
    def is_revoked(self) -> bool:
        """True when the refresh token was already spent or access was withdrawn."""
        return self._revoked


class AmoCRMRateLimited(AmoCRMAPIError):
    """429 after the allowed retries; ``retry_after`` is the server's advice in seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, problem=problem)
        self.retry_after = retry_after


class AmoCRMBlocked(AmoCRMAPIError):
    """403: the account or our IP is blocked (or the granting user lacks rights).

    ``from_gateway`` is True when the body was HTML or plain text, which is how the nginx block
    page looks; a problem+json 403 is more often a rights problem (users, webhooks, pipelines).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 403,
        problem: dict[str, Any] | None = None,
        from_gateway: bool = False,
    ) -> None:
        super().__init__(message, status=status, problem=problem)
        self.from_gateway = from_gateway


class AmoCRMPaymentRequired(AmoCRMAPIError):
    """402: the account's subscription has ended."""


class AmoCRMNotFound(AmoCRMAPIError):
    """404: an unknown route or sub-resource (unknown entity ids give 204, not this)."""


class AmoCRMValidationError(AmoCRMAPIError):
    """400 with ``validation-errors``; ``errors`` is that list as amoCRM sent it."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The ``validation-errors`` items (``request_id`` plus ``errors[code,path,detail]``)."""
        value = self.problem.get("validation-errors")
        return value if isinstance(value, list) else []


class AmoCRMUnavailable(AmoCRMAPIError):
    """No usable answer: timeout, connection error, or 5xx after the allowed retries."""


class ThrottleUnavailable(AmoCRMUnavailable):
    """The shared rate limiter (Redis) cannot be reached; nothing was sent to amoCRM."""
