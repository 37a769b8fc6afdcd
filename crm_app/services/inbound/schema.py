"""The body of ``POST /api/crm/inbound``, validated with pydantic."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crm_app.amocrm.fields import normalize_phone

MAX_MESSAGE = 10_000
MAX_UTM_ITEMS = 20
_UTM_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")

Text255 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]


class InboundPayload(BaseModel):
    """One first contact (or later message) from the widget backend or the bot."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    channel: Literal["telegram", "widget"]
    external_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    name: Text255 | None = None
    first_name: Text255 | None = None
    last_name: Text255 | None = None
    username: Annotated[str, StringConstraints(max_length=64)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    email: EmailStr | None = None
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE)] | None = None
    utm: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(default_factory=dict)
    page_url: HttpUrl | None = None

    @field_validator("external_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # Telegram user ids arrive as JSON numbers.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator(
        "name",
        "first_name",
        "last_name",
        "username",
        "phone",
        "email",
        "message",
        "page_url",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("username")
    @classmethod
    def _strip_at(cls, value: str | None) -> str | None:
        return value.lstrip("@") or None if value else value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if normalize_phone(value) is None:
            raise ValueError("not a valid phone number")
        return value

    @field_validator("utm", mode="before")
    @classmethod
    def _utm(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            if len(value) > MAX_UTM_ITEMS:
                raise ValueError(f"at most {MAX_UTM_ITEMS} UTM tags")
            for key in value:
                if not isinstance(key, str) or not _UTM_KEY_RE.match(key):
                    raise ValueError("UTM keys are letters, digits, '_', '.', '-' (1-40)")
            return {k: ("" if v is None else str(v) if isinstance(v, int | float) else v)
                    for k, v in value.items()}  # fmt: skip
        return value

    @field_validator("external_id")
    @classmethod
    def _telegram_id(cls, value: str, info: ValidationInfo) -> str:
        # `channel` is declared first, so it is already validated here.
        if info.data.get("channel") == "telegram" and not value.isdigit():
            raise ValueError("for the telegram channel this is the numeric Telegram user id")
        return value

    @model_validator(mode="after")
    def _full_name(self) -> InboundPayload:
        if not self.name and (self.first_name or self.last_name):
            self.name = " ".join(p for p in (self.first_name, self.last_name) if p)[:255]
        return self

    def stored(self) -> dict[str, Any]:
        """The JSON kept on the request row (empty fields dropped)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if not data.get("utm"):
            data.pop("utm", None)
        return data


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``[{"field": "phone", "message": "..."}]`` from a pydantic error, without input echoes."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "body"
        message = str(err.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        out.append({"field": loc, "message": message})
    return out


def parse_payload(data: Any) -> InboundPayload:
    """Validate a decoded JSON body; raises pydantic.ValidationError."""
    return InboundPayload.model_validate(data)
