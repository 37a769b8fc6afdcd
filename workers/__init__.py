"""Celery worker entry points and thin tasks."""
