"""Logging configuration with secrets masked (filled in by the hardening work)."""

from flask import Flask


def init_logging(app: Flask) -> None:
    """Configure structured logs."""
