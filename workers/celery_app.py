"""Worker entry: `celery -A workers.celery_app worker` (and `beat`)."""

from celery.signals import worker_process_init

from crm_app import create_app
from crm_app.extensions import db

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
app = celery_app


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # Forked children must not share the parent's pooled database connections.
    with flask_app.app_context():
        db.engine.dispose()
