"""All models, imported here so Alembic and create_all see every table."""

from crm_app.models import search as _search  # noqa: F401  (search DDL on the mirror tables)
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation
from crm_app.models.echo import OwnWrite
from crm_app.models.inbound import InboundPerson, InboundRequest, InboundStatus
from crm_app.models.integration import AmoConfig, AmoToken, ConnectionStatus, OAuthState
from crm_app.models.mirror import (
    AmoUser,
    Contact,
    Lead,
    Note,
    Pipeline,
    PipelineStatus,
    Task,
)
from crm_app.models.sync import RunStatus, SyncCursor, SyncLog, SyncRun
from crm_app.models.users import ApiKey, LoginFailure, Owner, Role, User, UserSession
from crm_app.models.webhooks import InboxStatus, WebhookDelivery, WebhookEventKey
from crm_app.models.workspace import LossReason, OutboxStatus, OutboxWrite, TaskType

__all__ = [
    "AmoConfig",
    "AmoToken",
    "AmoUser",
    "ApiKey",
    "ChatChannel",
    "ChatMessage",
    "ConnectionStatus",
    "Contact",
    "Conversation",
    "InboundPerson",
    "InboundRequest",
    "InboundStatus",
    "InboxStatus",
    "Lead",
    "LoginFailure",
    "LossReason",
    "Note",
    "OAuthState",
    "OutboxStatus",
    "OutboxWrite",
    "OwnWrite",
    "Owner",
    "Pipeline",
    "PipelineStatus",
    "Role",
    "RunStatus",
    "SyncCursor",
    "SyncLog",
    "SyncRun",
    "Task",
    "TaskType",
    "User",
    "UserSession",
    "WebhookDelivery",
    "WebhookEventKey",
]
