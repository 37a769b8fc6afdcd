"""gunicorn settings (read from the working directory by `gunicorn wsgi:app`); logs are masked."""

from __future__ import annotations

import os

# Local runs stay on loopback; the container sets GUNICORN_BIND=0.0.0.0:8000.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads keep slow amoCRM round-trips (OAuth callback, settings save) from blocking a worker.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak never becomes an outage; rarely, because a restart
# costs about a second of create_app and webhook bursts would otherwise recycle every few seconds.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "50000"))
max_requests_jitter = 5000
# No runtime control socket under $HOME: nothing here uses it, and the image's HOME is read-only.
control_socket_disable = True

# Only these proxies may set X-Forwarded-Proto (gunicorn then reports https to the app).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Every error and access line passes through crm_app.logging_setup's secret mask and LOG_FORMAT.
logger_class = "crm_app.logging_setup.GunicornLogger"
# key=value; the path and query are masked (webhook tokens, ?token=, ?code=) before output.
access_log_format = (
    'remote=%(h)s method=%(m)s path="%(U)s" query="%(q)s" status=%(s)s '
    'bytes=%(B)s duration_ms=%(M)s referer="%(f)s" ua="%(a)s"'
)
