"""Queueing Celery tasks by name: the one way services hand work to the workers."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app

logger = logging.getLogger(__name__)


def enqueue(name: str, *args: object, countdown: float | None = None) -> None:
    """Send task ``name`` with ``args``; with ``CELERY_EAGER`` run it here and now instead.

    Services address tasks by their registered name, so no service imports ``workers/``. The
    broker is tried once (no publish retries): every caller has its own way to recover from a
    failure (the beat re-enqueues stale rows, a sync run is marked failed), and a web request
    must not hang on a broker that is down. A failure raises; in eager mode, so does the task.
    """
    celery: Any = current_app.extensions["celery"]
    if celery.conf.task_always_eager:
        # `send_task` never runs eagerly; the registered task does. The task modules are
        # imported on demand, as a worker would at start-up. A countdown cannot be honoured.
        celery.loader.import_default_modules()
        celery.tasks[name].apply(args=args)
        return
    celery.send_task(name, args=list(args), countdown=countdown, retry=False)
