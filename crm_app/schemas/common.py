"""Shared request/response pieces of the JSON API: problems, owner scoping, paging."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# Postgres refuses NUL in text and control characters have no business in a search box or a
# setting; the pattern is in the OpenAPI document too, so clients learn it before they fail.
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
PlainStr = Annotated[str, StringConstraints(pattern=_NO_CONTROL)]
INT32_MAX = 2**31 - 1
# amoCRM ids are positive and can exceed 2**31 on big accounts; BIGINT columns hold 2**63 - 1.
AmoId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def utf8_text(value: object) -> object:
    """JSON may carry lone surrogates (`"\\ud800"`); they cannot be stored or hashed as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


class Strict(BaseModel):
    """JSON bodies: unknown fields are rejected (a typo or a privileged field is an error), and
    types are strict, so `"true"` is no boolean and `"5"` no id."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _utf8(cls, value: object) -> object:
        return utf8_text(value)


class FieldError(BaseModel):
    """One invalid field: where (`in`: query or body), which (`loc`), what is wrong (`msg`)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    in_: str = Field(alias="in", description="query or body")
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document; `errors` lists the field errors of a 422."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] | None = None


class OwnerQuery(BaseModel):
    """Admins may act on another owner with `?owner_id=`; everyone else only on their own."""

    # Unknown query parameters (cache busters, ?lang=) are ignored, as browsers expect.
    model_config = ConfigDict(extra="ignore")

    owner_id: int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        description="Admins only: act on this owner. Another owner's data answers 404 to others.",
    )


class ListQuery(OwnerQuery):
    """Paging and search over the local mirror."""

    limit: int = Field(default=50, ge=1, le=250, description="Page size (amoCRM's maximum: 250).")
    offset: int = Field(default=0, ge=0, le=1_000_000)
    q: Annotated[PlainStr, Field(max_length=200)] | None = Field(
        default=None, description="Search text (name, phone, e-mail; task text)."
    )


class EmptyBody(Strict):
    """Operations that take no parameters in the body (an empty body or `{}` is fine)."""
