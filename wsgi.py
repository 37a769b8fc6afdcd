"""WSGI entry: `flask --app wsgi run` or `gunicorn wsgi:app`."""

from crm_app import create_app

app = create_app()
