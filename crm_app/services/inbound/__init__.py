"""Inbound leads from the Telegram bot and the website widget: keys, intake, processing."""

from crm_app.services.inbound.intake import enqueue, get_or_create_person, submit
from crm_app.services.inbound.keys import (
    authenticate_api_key,
    create_api_key,
    list_api_keys,
    revoke,
    revoke_api_key,
)
from crm_app.services.inbound.processor import retry_request
from crm_app.services.inbound.runner import process, requeue_stale, run_owner
from crm_app.services.inbound.schema import InboundPayload, field_errors, parse_payload

__all__ = [
    "InboundPayload",
    "authenticate_api_key",
    "create_api_key",
    "enqueue",
    "field_errors",
    "get_or_create_person",
    "list_api_keys",
    "parse_payload",
    "process",
    "requeue_stale",
    "retry_request",
    "revoke",
    "revoke_api_key",
    "run_owner",
    "submit",
]
