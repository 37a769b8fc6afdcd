"""HTTP plumbing shared by the API and OAuth clients: session, proxy, timeouts, error bodies."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests

from crm_app.amocrm.errors import AmoCRMConfigError

DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 20.0)
DEFAULT_USER_AGENT = "crm-app-amocrm/1.0"
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")

Timeout = float | tuple[float, float]


def make_session(session: requests.Session | None = None) -> requests.Session:
    """Return ``session`` (or a new one) with ``trust_env`` switched off.

    With ``trust_env`` on, requests would merge HTTP(S)_PROXY/NO_PROXY/ALL_PROXY from the
    environment and credentials from ``~/.netrc`` into every call. Our only proxy is the one the
    operator configured as ``AMOCRM_PROXY`` (passed explicitly on every request), and our only
    credential is the Bearer header, so the environment must not add or override either.
    The cost: REQUESTS_CA_BUNDLE is ignored too; set ``session.verify`` if a private CA is needed.
    """
    session = session if session is not None else requests.Session()
    session.trust_env = False
    return session


def proxies_for(proxy: str | None) -> dict[str, str]:
    """The ``proxies`` mapping for one proxy URL applied to both http and https (or none)."""
    if not proxy:
        return {}
    try:
        parts = urlsplit(proxy)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise AmoCRMConfigError("AMOCRM_PROXY is not a valid URL") from exc
    if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
        raise AmoCRMConfigError("AMOCRM_PROXY must look like http://host:port")
    return {"http": proxy, "https": proxy}


def decode_problem(response: requests.Response) -> dict[str, Any] | None:
    """The JSON object in an error body, or None when the body is HTML, text or empty."""
    text = response.text.lstrip() if response.content else ""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def problem_summary(problem: dict[str, Any] | None) -> str:
    """A short human summary of a problem+json body: title and detail."""
    if not problem:
        return "non-JSON body"
    parts = [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
    return ": ".join(parts) if parts else "no detail"


def url_path(url: str) -> str:
    """The path of ``url`` only: queries may carry search terms (phones, e-mails)."""
    return urlsplit(url).path or "/"
