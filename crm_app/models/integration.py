"""Per-owner amoCRM configuration, tokens and OAuth state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.crypto import EncryptedText
from crm_app.extensions import Model
from crm_app.models.base import BigId, UTCDateTime, utcnow


class ConnectionStatus:
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


class AmoConfig(Model):
    """The settings form of one owner, plus what we learned about the connected account."""

    __tablename__ = "amocrm_configs"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), unique=True, index=True
    )
    subdomain: Mapped[str] = mapped_column(String(63), default="")
    domain: Mapped[str] = mapped_column(String(32), default="amocrm.ru")
    client_id: Mapped[str] = mapped_column(String(64), default="")
    client_secret: Mapped[str | None] = mapped_column(EncryptedText())
    redirect_uri: Mapped[str] = mapped_column(String(500), default="")
    sync_contacts: Mapped[bool] = mapped_column(default=True)
    sync_leads: Mapped[bool] = mapped_column(default=True)
    sync_tasks: Mapped[bool] = mapped_column(default=True)
    auto_create_lead: Mapped[bool] = mapped_column(default=False)
    lead_pipeline_id: Mapped[int | None] = mapped_column(BigId)
    lead_status_id: Mapped[int | None] = mapped_column(BigId)
    lead_responsible_user_id: Mapped[int | None] = mapped_column(BigId)
    new_deal_when_closed: Mapped[bool] = mapped_column(default=True)

    status: Mapped[str] = mapped_column(String(16), default=ConnectionStatus.DISCONNECTED)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    account_id: Mapped[int | None] = mapped_column(BigId)
    account_name: Mapped[str | None] = mapped_column(String(255))
    user_name: Mapped[str | None] = mapped_column(String(255))
    user_email: Mapped[str | None] = mapped_column(String(255))
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Webhook URL secret: the hash finds the owner, the ciphertext lets the admin see the URL.
    webhook_token: Mapped[str | None] = mapped_column(EncryptedText())
    webhook_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    webhook_subscribed: Mapped[bool] = mapped_column(default=False)
    webhook_error: Mapped[str | None] = mapped_column(Text)
    # Telegram Bot API webhook secret (path and X-Telegram-Bot-Api-Secret-Token).
    telegram_secret: Mapped[str | None] = mapped_column(EncryptedText())
    telegram_secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class AmoToken(Model):
    """The owner's current token pair; rotated under a per-owner lock."""

    __tablename__ = "amocrm_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), unique=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(16), default="oauth")  # oauth | long_lived
    access_token: Mapped[str] = mapped_column(EncryptedText())
    refresh_token: Mapped[str | None] = mapped_column(EncryptedText())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    api_domain: Mapped[str | None] = mapped_column(String(255))
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Bumped on every rotation so a waiter can tell that somebody else refreshed.
    version: Mapped[int] = mapped_column(default=1)


class OAuthState(Model):
    """A single-use OAuth `state`, bound to the user's session and owner, expiring."""

    __tablename__ = "oauth_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_nonce: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
