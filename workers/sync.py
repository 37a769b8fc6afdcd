"""Celery tasks for sync (thin: ids in, service call, retries and logging)."""
