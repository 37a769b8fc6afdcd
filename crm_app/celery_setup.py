"""Celery wired the Flask way: every task runs inside the app context."""

from __future__ import annotations

from pathlib import Path

from celery import Celery, Task
from flask import Flask

# Task modules; each holds thin tasks that call services.
TASK_MODULES = [
    "workers.tokens",
    "workers.sync",
    "workers.webhooks",
    "workers.inbound",
    "workers.workspace",
    "workers.chats",
]


def broker_settings(app: Flask) -> dict[str, object]:
    """Redis when REDIS_URL is set; otherwise kombu's filesystem transport under instance/."""
    redis_url = app.config.get("REDIS_URL")
    if redis_url:
        return {
            "broker_url": redis_url,
            # kombu's Redis transport, minus the AttributeError that ended the worker when
            # Redis died under it (see crm_app/broker.py).
            "broker_transport": "crm_app.broker:Transport",
            # Above the longest task (a full sync of a big account), so no redelivery mid-run.
            "broker_transport_options": {
                "visibility_timeout": 4 * 3600,
                # Publishing (web requests, the beat) tries the broker once instead of retrying
                # for seconds: with Redis down a request would otherwise hang ~6 s before its
                # fallback. The worker's consumer reconnects by its own, unaffected, settings.
                "max_retries": 0,
            },
        }
    base = Path(app.instance_path) / "celery"
    queue, processed, control = base / "queue", base / "processed", base / "control"
    for folder in (queue, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "data_folder_processed": str(processed),
            # Broadcast/pidbox files; kombu's default is ./control in the working directory.
            "control_folder": str(control),
        },
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app: Celery = Celery(app.name, task_cls=FlaskTask)
    celery_app.conf.update(
        task_default_queue=app.config["CELERY_QUEUE"],
        task_ignore_result=True,  # job state lives in our own tables
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_always_eager=bool(app.config.get("CELERY_EAGER")),
        task_eager_propagates=True,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        include=TASK_MODULES,
        **broker_settings(app),
    )
    from workers.schedule import beat_schedule

    celery_app.conf.beat_schedule = beat_schedule(app)
    # Beat's state file belongs in instance/, not in whatever directory the process started in.
    celery_app.conf.beat_schedule_filename = str(Path(app.instance_path) / "celerybeat-schedule")
    if app.config.get("REDIS_URL"):
        from crm_app.broker import RestoreAfterBrokerRestart

        celery_app.steps["consumer"].add(RestoreAfterBrokerRestart)
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
