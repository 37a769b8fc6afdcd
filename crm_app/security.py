"""Security headers and cookie hardening (filled in by the hardening work)."""

from flask import Flask


def init_security(app: Flask) -> None:
    """Attach security headers to responses."""
