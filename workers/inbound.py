"""Celery tasks for inbound (thin: ids in, service call, retries and logging)."""
