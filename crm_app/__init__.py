"""amoCRM integration service: the Flask application factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

# Imports live inside the functions so `python -m crm_app.sandbox` (which must import this
# package first) does not pay for Flask extensions and SQLAlchemy models it never uses.
logger = logging.getLogger(__name__)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: config, extensions, blueprints, error handlers, CLI, Celery."""
    from flask import Flask

    from crm_app.config import ROOT, load_config

    cfg = load_config(overrides)
    app = Flask(
        __name__,
        instance_path=cfg["INSTANCE_PATH"],
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(cfg)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    from crm_app.logging_setup import init_logging
    from crm_app.security import init_security

    init_logging(app)
    _init_secrets(app)
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    init_security(app)
    from crm_app.celery_setup import celery_init_app

    celery_init_app(app)
    return app


def _init_secrets(app: Flask) -> None:
    """Use configured keys; the embedded default keeps generated ones under instance/."""
    from crm_app import crypto

    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path, "secret.key")
    key = app.config["CRM_ENCRYPTION_KEY"] or crypto.dev_key(app.instance_path)
    app.config["CRM_ENCRYPTION_KEY"] = key
    crypto.init_keys(key)


def _instance_secret(instance_path: str, name: str) -> str:
    import secrets

    path = Path(instance_path) / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def register_extensions(app: Flask) -> None:
    from crm_app.config import ROOT
    from crm_app.extensions import babel, csrf, db, htmx, limiter, login_manager, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    # The login page says what to do; a flashed "Please log in" would outlive the sign-in and
    # greet the user on the CRM page as a stale banner.
    login_manager.login_message = None
    csrf.init_app(app)
    htmx.init_app(app)
    babel.init_app(app, locale_selector=_select_locale)
    limiter.init_app(app)
    from crm_app import models  # noqa: F401  (register tables)
    from crm_app.auth.sessions import load_user

    login_manager.user_loader(load_user)


def _select_locale() -> str:
    from flask import has_request_context, request, session

    if not has_request_context():  # Celery tasks and CLI commands render in the default language
        return "ru"
    lang = request.args.get("lang") or session.get("lang")
    if lang in ("ru", "en"):
        session["lang"] = lang
        return lang
    return "ru"


def register_blueprints(app: Flask) -> None:
    from crm_app.web import BLUEPRINTS
    from crm_app.web.converters import register_converters

    register_converters(app.url_map)  # before any route is added

    for bp in BLUEPRINTS:
        app.register_blueprint(bp)


def register_errorhandlers(app: Flask) -> None:
    from crm_app.web.errors import init_errorhandlers

    init_errorhandlers(app)


def register_commands(app: Flask) -> None:
    from crm_app.cli import register

    register(app)
