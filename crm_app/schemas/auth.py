"""POST /auth/token: the JSON sign-in that issues a short-lived JWT."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator
from spectree import Response

from crm_app.schemas.common import PlainStr, Problem, utf8_text


class TokenRequest(BaseModel):
    """Sign in with the same name and password as the /login form."""

    username: PlainStr = Field(max_length=80)
    password: str = Field(max_length=1024)

    @field_validator("username", "password", mode="before")
    @classmethod
    def _utf8(cls, value: object) -> object:
        return utf8_text(value)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the token expires.")


def token_responses() -> Response:
    """The answers of POST /auth/token, for SpecTree (a fresh object: SpecTree binds it)."""
    return Response(
        HTTP_200=TokenOut,
        HTTP_400=Problem,
        HTTP_401=Problem,
        HTTP_413=Problem,
        HTTP_429=(Problem, "Too many failed sign-ins for this address or username."),
    )
