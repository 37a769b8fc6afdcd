"""The beat schedule: data keyed by explicit task names, run by exactly one beat."""

from __future__ import annotations

from flask import Flask


def beat_schedule(app: Flask) -> dict[str, dict[str, object]]:
    return {
        "tokens-refresh-ahead": {
            "task": "tokens.refresh_due",
            "schedule": 600.0,
        },
        "sync-incremental-all": {
            "task": "sync.schedule_incremental",
            "schedule": float(app.config["SYNC_INTERVAL_SECONDS"]),
        },
        "sync-reconcile-all": {
            "task": "sync.schedule_reconcile",
            "schedule": float(app.config["RECONCILE_INTERVAL_SECONDS"]),
        },
        "webhooks-drain-inbox": {
            "task": "webhooks.drain_inbox",
            "schedule": 30.0,
        },
        "inbound-retry-queued": {
            "task": "inbound.retry_stale",
            "schedule": 60.0,
        },
        "inbound-refresh-fields": {
            "task": "inbound.refresh_fields",
            "schedule": 600.0,
        },
    }
