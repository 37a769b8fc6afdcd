"""Celery tasks for webhooks (thin: ids in, service call, retries and logging)."""
