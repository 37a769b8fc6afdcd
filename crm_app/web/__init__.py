"""Blueprints, registered by create_app() in this order."""

from crm_app.web import workspace_api  # noqa: F401  (adds the write routes to the API blueprint)
from crm_app.web.api import bp as api_bp
from crm_app.web.auth import bp as auth_bp
from crm_app.web.chats_hook import bp as chats_hook_bp
from crm_app.web.health import bp as health_bp
from crm_app.web.inbound import bp as inbound_bp
from crm_app.web.inbox import bp as inbox_bp
from crm_app.web.pages import bp as pages_bp
from crm_app.web.people import bp as people_bp
from crm_app.web.sync_ui import bp as sync_ui_bp
from crm_app.web.webhooks import bp as webhooks_bp
from crm_app.web.workspace import bp as workspace_bp

BLUEPRINTS = [
    auth_bp,
    health_bp,
    pages_bp,
    sync_ui_bp,
    api_bp,
    webhooks_bp,
    inbound_bp,
    chats_hook_bp,
    inbox_bp,
    people_bp,
    workspace_bp,
]
