"""amoCRM host names: subdomain validation, API/OAuth URLs and the callback referer check."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from crm_app.amocrm.errors import AmoCRMConfigError

ALLOWED_DOMAINS: tuple[str, ...] = ("amocrm.ru", "amocrm.com", "kommo.com")
AUTHORIZE_MODES: tuple[str, ...] = ("popup", "post_message")

_SUBDOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Hosts that exist on every amo domain but are never an account: a "www" account would send the
# token request to the shared host, which amoCRM rejects: the token endpoint is on the
# account's own subdomain (https://www.amocrm.ru/developers/content/oauth/step-by-step).
_RESERVED_SUBDOMAINS = frozenset({"www"})
# The JWT's api_domain claim looks like api-b.amocrm.ru; anything else is not followed.
_API_DOMAIN_RE = re.compile(r"api-[a-z0-9]{1,8}\.(?:amocrm\.ru|amocrm\.com|kommo\.com)")


def validate_subdomain(value: object) -> str:
    """Return the account subdomain in lower case, or raise AmoCRMConfigError.

    Only ``[a-z0-9][a-z0-9-]{0,62}`` passes: no dots, slashes, ``@``, ports, whitespace or
    non-ASCII, so the value can never steer a request to another host.
    """
    # isascii() first: str.lower() maps some non-ASCII letters (the Kelvin sign) to ASCII ones.
    if not isinstance(value, str) or not value.isascii():
        raise AmoCRMConfigError("subdomain must be an ASCII string")
    lowered = value.lower()
    if not _SUBDOMAIN_RE.fullmatch(lowered) or lowered in _RESERVED_SUBDOMAINS:
        raise AmoCRMConfigError(
            "subdomain must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return lowered


def validate_domain(value: object) -> str:
    """Return ``value`` lower-cased if it is one of ALLOWED_DOMAINS, else raise."""
    if not isinstance(value, str) or value.lower() not in ALLOWED_DOMAINS:
        raise AmoCRMConfigError(f"domain must be one of {', '.join(ALLOWED_DOMAINS)}")
    return value.lower()


def normalize_base_url(value: str) -> str:
    """Validate an ``AMOCRM_BASE_URL`` override: ``http(s)://host[:port]``, nothing else."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises ValueError on a malformed port
    except (AttributeError, ValueError) as exc:
        raise AmoCRMConfigError("AMOCRM_BASE_URL is not a valid URL") from exc
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise AmoCRMConfigError("AMOCRM_BASE_URL must look like http(s)://host[:port]")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def origin_of(url: str) -> str | None:
    """Return ``scheme://host[:port]`` of ``url`` in lower case, or None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.username or parts.password:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme.lower()}://{host}{suffix}"


def split_referer(host: object) -> tuple[str, str]:
    """Split an OAuth callback ``referer`` (``sub.amocrm.ru``) into (subdomain, domain).

    Raises AmoCRMConfigError for anything but a bare ``<sub>.<allowed domain>`` host.
    """
    if not isinstance(host, str) or not host.isascii():
        raise AmoCRMConfigError("referer is not an amoCRM account host")
    lowered = host.lower()
    for domain in ALLOWED_DOMAINS:
        suffix = "." + domain
        if lowered.endswith(suffix):
            sub = lowered[: -len(suffix)]
            try:
                return validate_subdomain(sub), domain
            except AmoCRMConfigError:
                break
    raise AmoCRMConfigError("referer is not an amoCRM account host")


def is_amocrm_referer(host: object) -> bool:
    """True if ``host`` is a bare ``<sub>.amocrm.ru|amocrm.com|kommo.com`` account host."""
    try:
        split_referer(host)
    except AmoCRMConfigError:
        return False
    return True


def validate_api_domain(value: object) -> str:
    """Return a JWT ``api_domain`` claim (``api-b.amocrm.ru``) if it is an amo host, else raise."""
    if isinstance(value, str):
        bare = value.lower()
        if bare.startswith("https://"):
            bare = bare[len("https://") :].rstrip("/")
        if bare.isascii() and _API_DOMAIN_RE.fullmatch(bare):
            return bare
    raise AmoCRMConfigError("api_domain is not an amoCRM API host")


@dataclass(frozen=True)
class AmoHosts:
    """Where one account's requests go: its API origin, token endpoint and consent page.

    ``base_url`` is the operator-only ``AMOCRM_BASE_URL`` override: when set, every request
    (consent page, token endpoint, API, subdomain lookup) goes to that one origin.
    """

    subdomain: str
    domain: str = "amocrm.ru"
    base_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "subdomain", validate_subdomain(self.subdomain))
        object.__setattr__(self, "domain", validate_domain(self.domain))
        if self.base_url is not None:
            object.__setattr__(self, "base_url", normalize_base_url(self.base_url))

    @classmethod
    def from_referer(cls, referer: str, base_url: str | None = None) -> AmoHosts:
        """Build hosts from an OAuth callback ``referer`` such as ``demo.kommo.com``."""
        sub, domain = split_referer(referer)
        return cls(sub, domain, base_url)

    @property
    def account_host(self) -> str:
        """The account's own host name, e.g. ``demo.amocrm.ru``."""
        return f"{self.subdomain}.{self.domain}"

    @property
    def api_origin(self) -> str:
        """``https://{sub}.{domain}``, or the base URL override."""
        return self.base_url or f"https://{self.account_host}"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint on the account's own host (never ``www``)."""
        return f"{self.api_origin}/oauth2/access_token"

    @property
    def throttle_key(self) -> str:
        """The key the shared rate limit is kept under: one budget per account."""
        return self.account_host

    def authorize_url(self, client_id: str, state: str, mode: str = "post_message") -> str:
        """The consent page URL: ``https://www.{domain}/oauth?client_id=&state=&mode=``."""
        if mode not in AUTHORIZE_MODES:
            raise AmoCRMConfigError("mode must be 'popup' or 'post_message'")
        origin = self.base_url or f"https://www.{self.domain}"
        query = urlencode({"client_id": client_id, "state": state, "mode": mode})
        return f"{origin}/oauth?{query}"

    def subdomain_lookup_url(self, api_domain: str) -> str:
        """``https://{api_domain}/oauth2/account/current/subdomain``.

        https://www.amocrm.ru/developers/content/oauth/account-subdomain-info
        """
        origin = self.base_url or f"https://{validate_api_domain(api_domain)}"
        return f"{origin}/oauth2/account/current/subdomain"

    def is_same_origin(self, url: str) -> bool:
        """True if ``url`` points at this account's API origin (scheme, host and port)."""
        return origin_of(url) == origin_of(self.api_origin)

    def with_account(self, subdomain: str, domain: str | None = None) -> AmoHosts:
        """A copy for a renamed account (keeps the base URL override)."""
        return AmoHosts(subdomain, domain or self.domain, self.base_url)
