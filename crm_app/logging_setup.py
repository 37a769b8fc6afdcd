"""Structured logs (JSON or key=value) with every secret shape masked before output."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from gunicorn.glogging import Logger as GunicornBaseLogger

logger = logging.getLogger(__name__)

MASK = "***"

# Keys whose value is secret wherever it appears: `key=value`, `key: value`, `"key": "value"`.
_SECRET_KEY = (
    r"[A-Za-z0-9_-]*(?:token|secret|password|passwd|api[_-]?key|authorization|cookie)"
    r"[A-Za-z0-9_-]*"
)
# The OAuth authorization code: secret as `code=...` or `"code": ...`, but not in prose, so
# "exit code: 1" stays readable.
_PARAM_KEY = r"code"
_UNQUOTED_VALUE = r"[^\s&,;\"'<>)}\]]+"

_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Credentials inside URLs: scheme://user:password@host (DATABASE_URL, AMOCRM_PROXY, ...).
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{MASK}@"),
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {MASK}"),
    # JWTs (amoCRM access tokens and our own API tokens) wherever they appear.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # amoCRM refresh tokens are long hex strings with this prefix.
    (re.compile(r"\bdef50200[0-9a-f]{32,}"), MASK),
    # Telegram bot tokens (`123456789:AA...`), e.g. inside api.telegram.org/bot<token>/ URLs.
    (re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}"), MASK),
    # Secret path segments of our webhook endpoints.
    (re.compile(r"(/webhooks/(?:amocrm|telegram)/)[^/\s?#\"']+"), rf"\1{MASK}"),
    # "key": "value" and 'key': 'value' (JSON bodies, Python reprs).
    (
        re.compile(
            rf"(?i)([\"'](?:{_SECRET_KEY}|{_PARAM_KEY})[\"']\s*:\s*)"
            r"(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,}\]]+)"
        ),
        rf'\1"{MASK}"',
    ),
    # key=value (query strings, forms, key=value logs) and key: value in prose.
    (
        re.compile(rf"(?i)(?<![A-Za-z0-9_-])({_SECRET_KEY})(\s*[=:]\s*)({_UNQUOTED_VALUE})"),
        rf"\1\2{MASK}",
    ),
    (
        re.compile(rf"(?i)(?<![A-Za-z0-9_-])({_PARAM_KEY})=({_UNQUOTED_VALUE})"),
        rf"\1={MASK}",
    ),
    # The OAuth `state` only as a query parameter: "sync state=running" is not a secret.
    (re.compile(rf"(?i)([?&]state=)({_UNQUOTED_VALUE})"), rf"\1{MASK}"),
)


def mask_secrets(text: str) -> str:
    """Replace every secret-looking substring of ``text`` with ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretMaskFilter(logging.Filter):
    """Rewrites a record's message, traceback and extras with secrets masked.

    Installed on handlers (not loggers) so records propagated from any library pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_secrets_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: keep the raw template, still masked
            message = f"{record.msg} {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        for name in _extra_names(record):
            value = record.__dict__[name]
            if isinstance(value, str):
                record.__dict__[name] = mask_secrets(value)
        record._secrets_masked = True
        return True


_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "_secrets_masked", "color_message"}


def _extra_names(record: logging.LogRecord) -> list[str]:
    return [k for k in record.__dict__ if k not in _STANDARD_ATTRS and not k.startswith("_")]


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _extra_names(record):
            value = record.__dict__[name]
            payload[name] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(payload, ensure_ascii=False, default=str)


_BARE_VALUE = re.compile(r"[^\s\"=\\]+")


def _kv(value: object) -> str:
    text = str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... logger=... msg="..."` on one line; tracebacks are escaped, not split."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"msg={_kv(record.getMessage())}",
        ]
        parts += [f"{name}={_kv(record.__dict__[name])}" for name in _extra_names(record)]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={_kv(record.exc_text)}")
        return " ".join(parts)


def make_formatter(log_format: str | None = None) -> logging.Formatter:
    """The formatter for LOG_FORMAT (`json` or `text`, default text)."""
    chosen = (log_format or os.environ.get("LOG_FORMAT") or "text").strip().lower()
    return JsonFormatter() if chosen == "json" else KeyValueFormatter()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test runners swap it)."""

    # Marks the handler create_app installed, so a second create_app replaces it.
    _crm_app = False

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def harden_handler(handler: logging.Handler, formatter: logging.Formatter | None = None) -> None:
    """Add the mask filter to a handler (once) and optionally set our formatter."""
    if not any(isinstance(f, SecretMaskFilter) for f in handler.filters):
        handler.addFilter(SecretMaskFilter())
    if formatter is not None:
        handler.setFormatter(formatter)


def init_logging(app: Flask) -> None:
    """Configure the root logger from LOG_FORMAT / LOG_LEVEL, with secrets masked."""
    log_format = app.config.get("LOG_FORMAT") or os.environ.get("LOG_FORMAT")
    level_name = str(app.config.get("LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        level = logging.INFO
    formatter = make_formatter(log_format)

    root = logging.getLogger()
    # create_app may run many times in one process (tests, CLI): replace our handler, keep others.
    for handler in list(root.handlers):
        if getattr(handler, "_crm_app", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler._crm_app = True
    harden_handler(handler, formatter)
    root.addHandler(handler)
    root.setLevel(level)

    # Loggers that may already own handlers (werkzeug adds one before we run; gunicorn and
    # Celery have their own): mask whatever they write too.
    for name in ("werkzeug", "gunicorn.error", "gunicorn.access", "celery", "celery.task"):
        for existing in logging.getLogger(name).handlers:
            harden_handler(existing)
    # Alembic announces each of its plugins at INFO whenever Flask-Migrate loads it, i.e. on
    # every `flask` command; what a migration does is still logged (alembic.runtime.migration).
    logging.getLogger("alembic.runtime.plugins").setLevel(max(level, logging.WARNING))
    _hook_celery(formatter)


class CeleryTaskFilter(logging.Filter):
    """Adds task_name / task_id to records logged inside a Celery task.

    Our formatters replace Celery's TaskFormatter, which is where those used to come from.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from celery._state import get_current_task

        task = get_current_task()
        if task is not None and getattr(task, "request", None) is not None:
            record.task_name = getattr(task, "name", None) or "-"
            record.task_id = getattr(task.request, "id", None) or "-"
        return True


def _hook_celery(formatter: logging.Formatter) -> None:
    """Celery replaces the root handlers when a worker starts; mask its handlers as well."""
    from celery import signals

    def _after_setup(logger: logging.Logger | None = None, **_: object) -> None:
        for target in (logger, logging.getLogger()):
            for handler in target.handlers if target is not None else ():
                harden_handler(handler, formatter)
                if not any(isinstance(f, CeleryTaskFilter) for f in handler.filters):
                    handler.addFilter(CeleryTaskFilter())

    signals.after_setup_logger.connect(_after_setup, weak=False, dispatch_uid="crm-mask-root")
    signals.after_setup_task_logger.connect(_after_setup, weak=False, dispatch_uid="crm-mask-task")


# Sent by elements that poll (hx-headers on the polling element): their requests are routine,
# so the access log records them at DEBUG instead of one INFO line every few seconds per page.
POLL_HEADER = "X-CRM-Poll"
_POLL_ENVIRON = "HTTP_" + POLL_HEADER.upper().replace("-", "_")


class GunicornLogger(GunicornBaseLogger):
    """gunicorn `logger_class` whose error and access logs pass through the mask."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if not environ.get(_POLL_ENVIRON):
            super().access(resp, req, environ, request_time)
        elif self.access_log_enabled and self.access_log.isEnabledFor(logging.DEBUG):
            atoms = self.atoms_wrapper_class(dict(self.atoms(resp, req, environ, request_time)))
            self.access_log.debug(self.cfg.access_log_format, atoms)

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = make_formatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                harden_handler(handler, formatter)
