"""Security headers on every response and session-cookie hardening."""

from __future__ import annotations

import logging
import os

from flask import Flask, Response, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

from crm_app.amocrm.hosts import ALLOWED_DOMAINS, origin_of

logger = logging.getLogger(__name__)

HSTS_VALUE = "max-age=31536000"
# same-origin keeps the full Referer for our own POSTs (Flask-WTF checks it over HTTPS) and
# sends nothing to other sites, so paths with tokens never leak to amoCRM or anyone else.
REFERRER_POLICY = "same-origin"
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def build_csp(amocrm_base_url: str = "") -> str:
    """The Content-Security-Policy for HTML pages: no inline script or style, no framing."""
    # A form may redirect to amoCRM's consent page (browsers apply form-action to redirects).
    form_targets = ["'self'", *(f"https://*.{domain}" for domain in ALLOWED_DOMAINS)]
    base_origin = origin_of(amocrm_base_url) if amocrm_base_url else None
    if base_origin:
        form_targets.append(base_origin)
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": " ".join(form_targets),
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def is_https_deployment(app: Flask) -> bool:
    return str(app.config.get("PUBLIC_URL", "")).startswith("https://")


def _harden_cookies(app: Flask) -> None:
    # load_config derives these from the PUBLIC_URL env var; an override passed to create_app
    # must get the same treatment. Never downgrade a flag that is already on.
    https = is_https_deployment(app)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["REMEMBER_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"
    app.config["REMEMBER_COOKIE_SAMESITE"] = app.config.get("REMEMBER_COOKIE_SAMESITE") or "Lax"
    if https:
        app.config["SESSION_COOKIE_SECURE"] = True
        app.config["REMEMBER_COOKIE_SECURE"] = True


def _set_headers(response: Response) -> Response:
    app = current_app
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", REFERRER_POLICY)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
    if response.mimetype == "text/html":
        headers.setdefault("Content-Security-Policy", app.extensions["crm_csp"])
    if request.is_secure or is_https_deployment(app):
        headers.setdefault("Strict-Transport-Security", HSTS_VALUE)
    # Pages and JSON may carry CSRF tokens, webhook URLs or CRM data: keep them out of caches.
    if request.endpoint != "static" and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
    return response


def trusted_proxy_count(app: Flask) -> int:
    """How many reverse proxies in front of the app may set X-Forwarded-For/-Proto (default 0)."""
    raw = app.config.get("TRUSTED_PROXY_COUNT", os.environ.get("TRUSTED_PROXY_COUNT", "0"))
    try:
        return max(0, int(raw or 0))
    except (TypeError, ValueError):
        logger.warning("TRUSTED_PROXY_COUNT is not a number; trusting no proxy headers")
        return 0


def init_security(app: Flask) -> None:
    """Attach security headers to every response and harden the session cookies."""
    _harden_cookies(app)
    hops = trusted_proxy_count(app)
    if hops:
        # Behind TLS-terminating proxies: the client address (rate limits) and https scheme
        # (HSTS, secure cookies) come from their headers, and only from that many hops.
        # Flask's documented way to wrap the WSGI app; mypy sees a method being replaced.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.extensions["crm_csp"] = build_csp(str(app.config.get("AMOCRM_BASE_URL") or ""))
    app.after_request(_set_headers)
