"""Unbound Flask extension singletons, bound to the app in create_app()."""

from typing import TYPE_CHECKING, ClassVar

from flask_babel import Babel
from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.model import Model as _FlaskModel
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Table
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base shared by every model."""


db = SQLAlchemy(model_class=Base)

if TYPE_CHECKING:
    # db.Model is built at run time (Flask-SQLAlchemy's mixins over our declarative base), so a
    # type checker cannot see it; models subclass this name, which is db.Model when running.
    class Model(_FlaskModel, Base):
        __abstract__ = True
        # Every model maps one Table (DeclarativeBase types it as any FromClause).
        __table__: ClassVar[Table]

else:
    Model = db.Model
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = HTMX()
babel = Babel()
limiter = Limiter(key_func=get_remote_address, default_limits=[])
