"""All models, imported here so Alembic and create_all see every table."""

from crm_app.models.chats import ChatChannel, ChatMessage, Conversation
from crm_app.models.inbound import InboundPerson, InboundRequest, InboundStatus
from crm_app.models.integration import AmoConfig, AmoToken, ConnectionStatus, OAuthState
from crm_app.models.mirror import AmoUser, Contact, Lead, Pipeline, PipelineStatus, Task
from crm_app.models.sync import RunStatus, SyncCursor, SyncLog, SyncRun
from crm_app.models.users import ApiKey, Owner, Role, User
from crm_app.models.webhooks import InboxStatus, WebhookDelivery, WebhookEventKey

__all__ = [
    "AmoConfig",
    "AmoToken",
    "AmoUser",
    "ChatChannel",
    "ChatMessage",
    "ApiKey",
    "ConnectionStatus",
    "Contact",
    "Conversation",
    "InboundPerson",
    "InboundRequest",
    "InboundStatus",
    "InboxStatus",
    "Lead",
    "OAuthState",
    "Owner",
    "Pipeline",
    "PipelineStatus",
    "Role",
    "RunStatus",
    "SyncCursor",
    "SyncLog",
    "SyncRun",
    "Task",
    "User",
    "WebhookDelivery",
    "WebhookEventKey",
]
