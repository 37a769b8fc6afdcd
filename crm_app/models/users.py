"""Owners (tenants), users with roles, and API keys."""

from __future__ import annotations

import enum
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm_app.extensions import Model
from crm_app.models.base import UTCDateTime, utcnow


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"
    GUEST = "guest"


class Owner(Model):
    """A tenant: one bot/widget owner with its own amoCRM integration."""

    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class User(UserMixin, Model):
    """A person who signs in to the admin UI or the JSON API."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER.value)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    is_active_flag: Mapped[bool] = mapped_column(default=True)
    # Bumped by a password change, a deactivation and "sign out everywhere": API tokens carry
    # the version they were issued under and stop working when it moves on.
    auth_version: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[Owner] = relationship(lazy="joined")

    @property
    def is_active(self) -> bool:
        return self.is_active_flag

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value

    @property
    def can_write(self) -> bool:
        return self.role in (Role.ADMIN.value, Role.USER.value)


class UserSession(Model):
    """A signed-in browser: the cookie carries a random id, only its SHA-256 is stored here.

    A session cookie is valid only while its row exists, so logout, a password change, a
    deactivation and "sign out everywhere" end it on the server, not just in the browser.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class ApiKey(Model):
    """A widget-backend/bot key: stored as a SHA-256 hash, shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoginFailure(Model):
    """Failed sign-ins of one throttle key (a hash of name + address, or of an address)."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # Unix seconds: the last failure, and until when the key must wait.
    last_failure: Mapped[float] = mapped_column(Float, default=0.0)
    blocked_until: Mapped[float] = mapped_column(Float, default=0.0)
