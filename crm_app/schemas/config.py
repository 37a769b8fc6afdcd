"""Settings, connection and account: the bodies of /admin/crm/config, auth-url, status, account."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from crm_app.amocrm.errors import AmoCRMConfigError
from crm_app.amocrm.hosts import validate_subdomain
from crm_app.schemas.common import AmoId, OwnerQuery, Strict

Domain = Literal["amocrm.ru", "amocrm.com", "kommo.com"]
_SUBDOMAIN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"
# What amoCRM issues as a client id (a UUID) or anything close to it; never a URL or a path.
_CLIENT_ID = r"^[A-Za-z0-9._-]{0,64}$"
_URL = r"^(https?://[^\x00-\x20\x7f]+)?$"
_PRINTABLE = r"^[\x20-\x7e]*$"
# Codes and tokens: printable ASCII without spaces (JWTs, amoCRM's hex codes).
_TOKEN = r"^[\x21-\x7e]+$"


def _omittable(**kwargs: Any) -> Any:
    """A field that may be left out (None: unchanged) but not sent as null.

    Typed Any on purpose: the annotation says what a sent value must be, while the default
    stays None so that "not sent" is visible to the code.
    """
    return Field(default=None, **kwargs)


class ConfigUpdate(Strict):
    """PUT /admin/crm/config: every field optional; only the fields sent change (null clears).

    `authorization_code` (a private integration's code) or `long_lived_token` connects at
    once. Anything else — `owner_id`, `role`, token or status fields — is rejected (422).
    """

    # Fields that cannot be null default to None without accepting null: not sent = unchanged.
    subdomain: Annotated[str, StringConstraints(pattern=_SUBDOMAIN)] = _omittable(
        description="Account subdomain: `mycompany` for mycompany.amocrm.ru."
    )
    domain: Domain = _omittable()
    client_id: Annotated[str, StringConstraints(pattern=_CLIENT_ID)] = _omittable()
    client_secret: Annotated[str, StringConstraints(pattern=_PRINTABLE, max_length=255)] = (
        _omittable(
            description="Write-only (GET answers `client_secret_set`); empty keeps the stored one.",
        )
    )
    redirect_uri: Annotated[str, StringConstraints(pattern=_URL, max_length=500)] = _omittable(
        description="Empty: PUBLIC_URL + /admin/crm/callback."
    )
    sync_contacts: bool = _omittable()
    sync_leads: bool = _omittable()
    sync_tasks: bool = _omittable()
    auto_create_lead: bool = _omittable()
    new_deal_when_closed: bool = _omittable(
        description="A repeat contact whose last deal is closed (142/143) gets a new deal; off: a note.",
    )
    lead_pipeline_id: AmoId | None = Field(default=None, description="null clears it.")
    lead_status_id: AmoId | None = Field(default=None, description="null clears it.")
    lead_responsible_user_id: AmoId | None = Field(
        default=None, description="amoCRM user who gets the leads made from first contacts."
    )
    authorization_code: Annotated[str, StringConstraints(pattern=_TOKEN, max_length=8192)] = (
        _omittable(description="A private integration's code; exchanged for tokens at once.")
    )
    long_lived_token: Annotated[str, StringConstraints(pattern=_TOKEN, max_length=8192)] = (
        _omittable(description="A long-lived token from the integration's settings.")
    )

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str) -> str:
        try:
            return validate_subdomain(value)
        except AmoCRMConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_credential(self) -> ConfigUpdate:
        if self.authorization_code is not None and self.long_lived_token is not None:
            raise ValueError("send either authorization_code or long_lived_token, not both")
        return self

    def settings(self) -> dict[str, object]:
        """The plain settings that were sent (credentials excluded)."""
        return self.model_dump(
            exclude_unset=True, exclude={"authorization_code", "long_lived_token"}
        )


ConnectionState = Literal["connected", "disconnected", "error"]


class ConfigOut(BaseModel):
    """GET /admin/crm/config: the settings without secrets, plus the webhook URL to paste."""

    model_config = ConfigDict(extra="allow")

    subdomain: str
    domain: str
    client_id: str
    client_secret_set: bool
    redirect_uri: str
    sync_contacts: bool
    sync_leads: bool
    sync_tasks: bool
    auto_create_lead: bool
    new_deal_when_closed: bool = True
    lead_pipeline_id: int | None
    lead_status_id: int | None
    lead_responsible_user_id: int | None = None
    webhook_url: str | None = Field(
        description="Where amoCRM posts account webhooks (null for read-only users)."
    )
    status: ConnectionState


class AuthUrlQuery(OwnerQuery):
    mode: Literal["popup", "post_message"] = Field(
        default="post_message",
        description="How amoCRM hands the code back: a popup redirect or a postMessage.",
    )


class AuthUrlOut(BaseModel):
    url: str = Field(description="amoCRM's consent page with client_id, a single-use state, mode.")


class StatusOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: ConnectionState
    last_error: str | None = None


class AccountOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    account_id: int | None
    account_name: str | None
    subdomain: str | None
    user_name: str | None
    user_email: str | None


class DisconnectOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: ConnectionState
