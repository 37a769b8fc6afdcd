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
            "schedule": float(app.config.get("WEBHOOK_DRAIN_SECONDS", 30.0)),
        },
        "inbound-retry-queued": {
            "task": "inbound.retry_stale",
            "schedule": float(app.config.get("INBOUND_SWEEP_SECONDS", 15.0)),
        },
        # Outages: silent sync runs handed to a live worker; the amoCRM subscription checked.
        "sync-take-over-stale": {
            "task": "sync.take_over_stale",
            "schedule": float(app.config.get("SYNC_TAKEOVER_INTERVAL_SECONDS", 15.0)),
        },
        "webhooks-watchdog": {
            "task": "webhooks.watchdog",
            "schedule": float(app.config.get("WEBHOOK_WATCHDOG_SECONDS", 300.0)),
        },
        "chats-outbox-sweep": {
            "task": "chats.sweep",
            "schedule": float(app.config.get("CHATS_SWEEP_SECONDS", 10.0)),
        },
        "chats-reconcile-history": {
            "task": "chats.reconcile",
            "schedule": float(app.config.get("CHATS_RECONCILE_SECONDS", 300.0)),
        },
        "workspace-outbox-sweep": {
            "task": "workspace.outbox_sweep",
            "schedule": 15.0,
        },
        "inbound-refresh-fields": {
            "task": "inbound.refresh_fields",
            "schedule": 600.0,
        },
    }
