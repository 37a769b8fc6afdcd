"""Celery tasks for tokens (thin: ids in, service call, retries and logging)."""
