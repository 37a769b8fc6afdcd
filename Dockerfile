# syntax=docker/dockerfile:1
# One image for every role, chosen by the command (see docker-compose.yml):
#   web      gunicorn wsgi:app                      (the default CMD)
#   worker   celery -A workers.celery_app worker
#   beat     celery -A workers.celery_app beat      (exactly one replica)
#   migrate  flask --app wsgi db upgrade            (one-off, before the others)
#   proxy    python proxy/amocrm_proxy.py           (optional, on the host network)
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A venv copied whole into the runtime stage: no pip, wheels cache or build files ship.
# WHEELS_URL (optional): a folder of wheels for every requirement, served over HTTP; the
# install then needs no package index (`make image-check` uses it as its wheel cache).
ARG WHEELS_URL=
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ${WHEELS_URL:+--no-index --find-links "$WHEELS_URL"} \
       --requirement /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/app \
    CRM_INSTANCE_PATH=/app/instance \
    GUNICORN_BIND=0.0.0.0:8000
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Code stays owned by root, so the app user cannot modify what it runs.
COPY . /app
# One RUN for the user and the compiled code: every layer is a full copy on some storage drivers.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
       --shell /usr/sbin/nologin app \
    && python -m compileall -q /app/crm_app /app/workers /app/proxy \
    && mkdir -p /app/instance/webhook-spool /var/lib/crm-beat \
    && chown app:app /app/instance /app/instance/webhook-spool /var/lib/crm-beat
USER 10001:10001
EXPOSE 8000
# Liveness of the web role; compose replaces it for worker and beat, which serve no HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GUNICORN_BIND', '0.0.0.0:8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
CMD ["gunicorn", "wsgi:app"]
