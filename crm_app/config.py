"""Configuration read from the environment (see README "Configuration")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = Path(os.environ.get("CRM_INSTANCE_PATH", ROOT / "instance"))


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _postgres_url() -> str:
    """A URL from POSTGRES_HOST/PORT/USER/PASSWORD/DB (compose's database), or "" without a host.

    Compose passes the parts: it cannot nest a default inside DATABASE_URL's default, and the
    password may hold characters that must be escaped in a URL.
    """
    host = os.environ.get("POSTGRES_HOST", "")
    if not host:
        return ""
    user = quote(os.environ.get("POSTGRES_USER") or "crm", safe="")
    password = quote(os.environ.get("POSTGRES_PASSWORD", ""), safe="")
    port = os.environ.get("POSTGRES_PORT") or "5432"
    name = quote(os.environ.get("POSTGRES_DB") or "crm", safe="")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{name}"


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config dict from environment variables, then apply overrides."""
    instance = Path(os.environ.get("CRM_INSTANCE_PATH", INSTANCE))
    database_url = (
        os.environ.get("DATABASE_URL") or _postgres_url() or f"sqlite:///{instance / 'crm.sqlite3'}"
    )
    # Heroku-style URLs name the old driver; we ship psycopg 3.
    if database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    public_url = os.environ.get("PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/")
    cfg: dict[str, Any] = {
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": os.environ.get("SECRET_KEY", ""),
        "CRM_ENCRYPTION_KEY": os.environ.get("CRM_ENCRYPTION_KEY", ""),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "AMOCRM_PROXY": os.environ.get("AMOCRM_PROXY", ""),
        "AMOCRM_BASE_URL": os.environ.get("AMOCRM_BASE_URL", "").rstrip("/"),
        "AMOCRM_RATE_LIMIT": _float("AMOCRM_RATE_LIMIT", 7.0),
        "AMOCRM_TIMEOUT": (
            _float("AMOCRM_CONNECT_TIMEOUT", 5.0),
            _float("AMOCRM_READ_TIMEOUT", 20.0),
        ),
        "PUBLIC_URL": public_url,
        "TOKEN_REFRESH_AHEAD_SECONDS": _int("TOKEN_REFRESH_AHEAD_SECONDS", 6 * 3600),
        "TOKEN_KEEPALIVE_DAYS": _int("TOKEN_KEEPALIVE_DAYS", 30),
        "SYNC_INTERVAL_SECONDS": _int("SYNC_INTERVAL_SECONDS", 300),
        "RECONCILE_INTERVAL_SECONDS": _int("RECONCILE_INTERVAL_SECONDS", 6 * 3600),
        # Sync engine (docs/sync.md): takeover of silent runs, cursor overlap, 429 waits.
        # A running sync renews its lease every SYNC_HEARTBEAT_SECONDS; one silent for
        # SYNC_STALE_SECONDS is handed to another worker by the takeover beat (docs/sync.md).
        "SYNC_STALE_SECONDS": _int("SYNC_STALE_SECONDS", 45),
        "SYNC_HEARTBEAT_SECONDS": _float("SYNC_HEARTBEAT_SECONDS", 10.0),
        "SYNC_TAKEOVER_INTERVAL_SECONDS": _float("SYNC_TAKEOVER_INTERVAL_SECONDS", 15.0),
        "SYNC_CURSOR_OVERLAP_SECONDS": _int("SYNC_CURSOR_OVERLAP_SECONDS", 300),
        "SYNC_RATE_LIMIT_MAX_WAIT": _float("SYNC_RATE_LIMIT_MAX_WAIT", 60.0),
        # How long a run waits for the shared rate limiter (Redis) to come back.
        "SYNC_LIMITER_MAX_WAIT": _float("SYNC_LIMITER_MAX_WAIT", 300.0),
        "SYNC_FETCH_CONCURRENCY": _int("SYNC_FETCH_CONCURRENCY", 3),
        "SYNC_RESUME_WINDOW_SECONDS": _int("SYNC_RESUME_WINDOW_SECONDS", 86400),
        "JWT_TTL_SECONDS": _int("JWT_TTL_SECONDS", 900),
        "JWT_ISSUER": os.environ.get("JWT_ISSUER", "crm-app"),
        "JWT_AUDIENCE": os.environ.get("JWT_AUDIENCE", "crm-app-api"),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 1024 * 1024),
        "WEBHOOK_MAX_BODY": _int("WEBHOOK_MAX_BODY", 256 * 1024),
        # Workspace writes (docs/workspace.md): the interactive call's timeouts, outbox backoff.
        "WORKSPACE_WRITE_TIMEOUT": (
            _float("WORKSPACE_CONNECT_TIMEOUT", 3.05),
            _float("WORKSPACE_READ_TIMEOUT", 10.0),
        ),
        "WORKSPACE_OUTBOX_MAX_BACKOFF": _float("WORKSPACE_OUTBOX_MAX_BACKOFF", 5.0),
        # Cards in one page of a board column (the first paint and every "more").
        "WORKSPACE_BOARD_PAGE": _int("WORKSPACE_BOARD_PAGE", 20),
        "WEBHOOK_TOKEN_CACHE_SECONDS": _float("WEBHOOK_TOKEN_CACHE_SECONDS", 5.0),
        "WEBHOOK_FAST_PATH": _bool("WEBHOOK_FAST_PATH", True),
        "WEBHOOK_SYNC_COMMIT": _bool("WEBHOOK_SYNC_COMMIT", False),
        # Outages (docs/deployment.md "Outages"): the webhook spool while the database is down,
        # the subscription watchdog, the queued-request sweeps, 503 answers.
        "WEBHOOK_SPOOL_MAX_BYTES": _int("WEBHOOK_SPOOL_MAX_BYTES", 256 * 1024 * 1024),
        "WEBHOOK_SPOOL_SWEEP_SECONDS": _float("WEBHOOK_SPOOL_SWEEP_SECONDS", 2.0),
        "WEBHOOK_WATCHDOG_SECONDS": _float("WEBHOOK_WATCHDOG_SECONDS", 300.0),
        "WEBHOOK_DRAIN_SECONDS": _float("WEBHOOK_DRAIN_SECONDS", 30.0),
        "INBOUND_SWEEP_SECONDS": _float("INBOUND_SWEEP_SECONDS", 15.0),
        "INBOUND_OUTAGE_WAIT_SECONDS": _float("INBOUND_OUTAGE_WAIT_SECONDS", 120.0),
        "DB_UNAVAILABLE_RETRY_AFTER": _int("DB_UNAVAILABLE_RETRY_AFTER", 10),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": public_url.startswith("https://"),
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SECURE": public_url.startswith("https://"),
        "WTF_CSRF_TIME_LIMIT": None,
        "BABEL_DEFAULT_LOCALE": os.environ.get("BABEL_DEFAULT_LOCALE", "ru"),
        "BABEL_TRANSLATION_DIRECTORIES": str(ROOT / "translations"),
        "RATELIMIT_STORAGE_URI": os.environ.get("REDIS_URL") or "memory://",
        "RATELIMIT_HEADERS_ENABLED": True,
        # Redis down must not turn limited routes into 500s: count in memory meanwhile.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        # ...and a Redis error the fallback does not cover (the response headers of a request
        # that started before Redis died) is logged, not raised as a 500.
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_STORAGE_OPTIONS": (
            {"socket_connect_timeout": 1, "socket_timeout": 1}
            if os.environ.get("REDIS_URL")
            else {}
        ),
        # A browser session unused this long ends (server-side, whatever the cookie says).
        "SESSION_IDLE_SECONDS": _int("SESSION_IDLE_SECONDS", 14 * 86400),
        # Sign-in throttling (docs/deployment.md "Sign-in and sessions"): free failures per
        # (username, address) and per address, then delays doubling up to the maximum.
        "LOGIN_FREE_FAILURES": _int("LOGIN_FREE_FAILURES", 5),
        "LOGIN_ADDRESS_FREE_FAILURES": _int("LOGIN_ADDRESS_FREE_FAILURES", 50),
        "LOGIN_DELAY_SECONDS": _float("LOGIN_DELAY_SECONDS", 30.0),
        "LOGIN_MAX_DELAY_SECONDS": _float("LOGIN_MAX_DELAY_SECONDS", 900.0),
        "LOGIN_FORGET_SECONDS": _float("LOGIN_FORGET_SECONDS", 3600.0),
        # Celery: Redis when configured, otherwise kombu's filesystem transport (no server needed).
        "CELERY_EAGER": _bool("CELERY_EAGER", False),
        "CELERY_QUEUE": os.environ.get("CELERY_QUEUE", "crm"),
        # Read by logging_setup / security too (they honour overrides); listed here for one view.
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "TRUSTED_PROXY_COUNT": _int("TRUSTED_PROXY_COUNT", 0),
        # The inbox: how long a message waits for a side that is down before it is marked failed.
        "CHATS_GIVE_UP_HOURS": _float("CHATS_GIVE_UP_HOURS", 24.0),
        "TESTING": False,
    }
    if overrides:
        cfg.update(overrides)
    return cfg
