"""Liveness and readiness probes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from crm_app.extensions import db

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

# A probe that hangs is worse than one that fails: orchestrators stack up checks.
_REDIS_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers; touches no dependency so a DB outage never restarts it."""
    return jsonify(status="ok")


def _check_database() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any driver error means not ready
        db.session.rollback()  # leave no failed transaction behind in the scoped session
        logger.warning("readiness: database check failed (%s)", type(exc).__name__)
        return f"error: {type(exc).__name__}"


def _check_broker() -> str:
    redis_url = current_app.config.get("REDIS_URL")
    if redis_url:
        import redis

        try:
            client = redis.Redis.from_url(
                redis_url,
                socket_timeout=_REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
            )
            try:
                client.ping()
            finally:
                client.close()
            return "ok"
        except Exception as exc:
            # Only the class name: the URL (and its password) must not reach the response.
            logger.warning("readiness: broker check failed (%s)", type(exc).__name__)
            return f"error: {type(exc).__name__}"
    # The embedded filesystem broker only needs its folder to be writable.
    queue = Path(current_app.instance_path) / "celery" / "queue"
    if queue.is_dir() and os.access(queue, os.W_OK):
        return "ok (embedded filesystem broker)"
    return "error: embedded broker folder missing or read-only"


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and the Celery broker is reachable."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    ready = all(v.startswith("ok") for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), (200 if ready else 503)
