"""Every sandbox switch in one dataclass, with the defaults documented in docs/sandbox.md."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CLIENT_ID = "6f1c1a52-5b0e-4c3a-9d6e-5a9d0b000001"
DEFAULT_CLIENT_SECRET = "sandboxSecretKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:5000/admin/crm/callback"
DEFAULT_INTEGRATION_NAME = "Интеграция CRM (песочница)"

# Choices accepted by the string-valued switches; the CLI and PATCH /_sandbox/config check them.
CHOICES: dict[str, tuple[str, ...]] = {
    "body_429": ("json", "html"),
    "body_403": ("text", "html"),
    "over_limit": ("cap", "default"),
    "next_link": ("exact", "full-page"),
    "payment_required": ("off", "writes", "all"),
    "multitext_enum_keys": ("both", "code", "enum"),
    "webhook_text_values": ("string", "object"),
    "unauthorized_lang": ("en", "ru"),
    "oauth_client_errors": ("hint", "invalid_client"),
}


@dataclass
class SandboxConfig:
    """Knobs of the emulator; field names match the CLI flags with dashes turned to underscores."""

    subdomain: str = "demo"
    accounts: int = 1
    base_domain: str = "amocrm.ru"
    api_domain: str = "api-b.amocrm.ru"
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    redirect_uri: str = DEFAULT_REDIRECT_URI
    integration_name: str = DEFAULT_INTEGRATION_NAME
    disconnect_url: str | None = None
    # Seeded data (per account).
    contacts: int = 50
    leads: int = 30
    tasks: int = 20
    companies: int | None = None  # None: contacts // 10, at most 5000
    seed: int = 20240601
    seed_anchor: int | None = None  # "now" of the seeded history; None: today 00:00 UTC
    utc_offset: int = 3  # account time zone in hours (Europe/Moscow); webhook task dates use it
    # OAuth.
    code_ttl: int = 20 * 60
    access_ttl: int = 86400
    refresh_ttl: int = 90 * 86400
    refresh_grace: bool = False
    server_time: bool = True
    oauth_client_errors: str = "hint"
    # API behaviour.
    default_limit: int = 50
    max_limit: int = 250
    over_limit: str = "cap"
    next_link: str = "exact"
    api_filter: bool = True
    duplicate_control: bool = False
    complex_merge_in_batch: bool = False  # UNCONFIRMED: duplicates inside one complex request
    payment_required: str = "off"
    multitext_enum_keys: str = "both"
    unauthorized_lang: str = "en"
    # Limits.
    rate_limit: int = 7
    account_rate_limit: int = 0
    body_429: str = "json"
    retry_after_header: bool = False
    block_after: int = 30
    block_window: float = 60.0
    block_duration: float = 0.0  # 0: blocked until POST /_sandbox/unblock
    body_403: str = "text"
    # Webhooks.
    webhook_time_scale: float = 1.0
    webhook_timeout: float = 2.0
    webhook_workers: int = 4
    webhook_text_values: str = "string"
    webhook_status_also_update: bool = False
    webhook_old_pipeline_id: bool = False
    webhook_disable_threshold: int = 100
    # Chats API (amojo): one channel registered at start; more via POST /_sandbox/chat-channels.
    chat_channel_id: str = ""
    chat_secret: str = ""
    chat_hook_url: str = ""  # the channel's hook URL template, containing ":scope_id"
    chat_hook_timeout: float = 5.0
    # Which account-webhook setting receives unsorted[add] for a new chat: amoCRM's settings table
    # documents none, so it is configurable.
    chat_unsorted_setting: str = "add_lead"
    # Server.
    # Workspace writes (UNCONFIRMED points, defaults documented in docs/sandbox.md).
    loss_reasons_api: bool = True  # GET /api/v4/leads/loss_reasons (Kommo-documented)
    loss_reason_only_lost: bool = False  # refuse loss_reason_id unless the lead is lost (143)
    note_update_webhook: bool = True  # a PATCHed note fires note_* like an added one

    request_log_size: int = 100_000
    quiet: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def anchor(self) -> int:
        """The instant the seeded history ends at: fixed when given, else today's UTC midnight."""
        if self.seed_anchor is not None:
            return int(self.seed_anchor)
        now = int(time.time())
        return now - now % 86400

    def company_count(self) -> int:
        if self.companies is not None:
            return max(0, self.companies)
        return min(self.contacts // 10, 5000)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply runtime changes (PATCH /_sandbox/config); unknown keys or bad choices raise."""
        names = {f.name: f for f in dataclasses.fields(self)}
        applied: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in names or key in RESTART_ONLY:
                raise ValueError(f"cannot change {key!r} at runtime")
            if key in CHOICES and value not in CHOICES[key]:
                raise ValueError(f"{key} must be one of {', '.join(CHOICES[key])}")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, int) and not isinstance(value, bool) and value is not None:
                value = int(value)
            elif isinstance(current, float):
                value = float(value)
            setattr(self, key, value)
            applied[key] = value
        return applied

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that shape the seeded world or the server; changing them needs a restart.
RESTART_ONLY = frozenset(
    {
        "subdomain",
        "accounts",
        "contacts",
        "leads",
        "tasks",
        "companies",
        "seed",
        "seed_anchor",
        "webhook_workers",
        "request_log_size",
        "quiet",
        "extra",
    }
)
