"""The integration's settings: the settings form and `PUT /admin/crm/config` (input model,
validation against the mirror, storage)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from crm_app.amocrm.errors import AmoCRMConfigError
from crm_app.amocrm.hosts import ALLOWED_DOMAINS, split_referer, validate_subdomain
from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.models import AmoConfig, AmoUser, ConnectionStatus, Pipeline, PipelineStatus
from crm_app.services import tokens as token_store
from crm_app.services.mirror import (
    UNSORTED_STATUS_TYPE,
    active_pipelines,
    active_users,
    target_statuses,
)

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/admin/crm/callback"


class ConfigInvalid(ValueError):
    """The settings did not validate; ``errors`` maps a form field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def default_redirect_uri() -> str:
    """PUBLIC_URL + /admin/crm/callback: the Redirect URI to register in amoCRM."""
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + CALLBACK_PATH


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


class ConfigInput(BaseModel):
    """The settings form / PUT body. Unknown keys (owner_id, role, tokens...) are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    subdomain: str = Field(min_length=1)
    domain: str = "amocrm.ru"
    client_id: str = Field(default="", max_length=64)
    client_secret: str | None = Field(default=None, max_length=255)
    redirect_uri: str = Field(default="", max_length=500)
    sync_contacts: bool = True
    sync_leads: bool = True
    sync_tasks: bool = True
    auto_create_lead: bool = False
    new_deal_when_closed: bool = True
    lead_pipeline_id: int | None = Field(default=None, gt=0)
    lead_status_id: int | None = Field(default=None, gt=0)
    lead_responsible_user_id: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _split_pasted_host(cls, data: Any) -> Any:
        """Accept ``mycompany.amocrm.ru`` or a pasted URL: the host also sets the domain."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        raw = data.get("subdomain")
        if isinstance(raw, str) and ("." in raw or "/" in raw):
            text = raw.strip()
            host = urlsplit(text if "//" in text else "//" + text).hostname or ""
            try:
                sub, domain = split_referer(host)
            except AmoCRMConfigError:
                return data  # the field validator reports it
            data["subdomain"] = sub
            data["domain"] = domain
        return data

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str) -> str:
        try:
            return validate_subdomain(value)
        except AmoCRMConfigError as exc:
            raise ValueError(
                _n("поддомен: латинские буквы, цифры и дефис, например mycompany")
            ) from exc

    @field_validator("domain", mode="before")
    @classmethod
    def _domain(cls, value: Any) -> str:
        if value in (None, ""):
            return "amocrm.ru"
        if not isinstance(value, str) or value.strip().lower() not in ALLOWED_DOMAINS:
            raise ValueError(_n("домен: amocrm.ru, amocrm.com или kommo.com"))
        return value.strip().lower()

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if value and (not value.isascii() or not value.isprintable() or " " in value):
            raise ValueError(_n("Client ID: без пробелов, только латиница, цифры и знаки"))
        return value

    @field_validator("client_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if isinstance(value, str) and (not value.isascii() or not value.isprintable()):
            raise ValueError(_n("Client Secret содержит недопустимые символы"))
        return value

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise ValueError(_n("Redirect URI должен быть адресом http(s)://…"))
        if parts.username or parts.password:
            raise ValueError(_n("Redirect URI не может содержать логин и пароль"))
        return value

    @field_validator(
        "lead_pipeline_id", "lead_status_id", "lead_responsible_user_id", mode="before"
    )
    @classmethod
    def _optional_id(cls, value: Any) -> Any:
        return _blank_to_none(value)


_FIELD_MESSAGES = {
    "missing": _n("Обязательное поле"),
    "string_too_short": _n("Обязательное поле"),
    "string_too_long": _n("Слишком длинное значение"),
    "int_parsing": _n("Нужно целое число"),
    "int_type": _n("Нужно целое число"),
    "greater_than": _n("Нужно положительное число"),
    "bool_parsing": _n("Нужно да или нет"),
    "bool_type": _n("Нужно да или нет"),
    "string_type": _n("Нужна строка"),
}


def parse_config(data: Mapping[str, Any]) -> ConfigInput:
    """Validate a form or JSON body into ConfigInput, or raise ConfigInvalid with field errors."""
    try:
        return ConfigInput.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for item in exc.errors(include_url=False, include_input=False):
            field = str(item["loc"][0]) if item.get("loc") else "__all__"
            if item["type"] == "value_error":
                text = str(item.get("ctx", {}).get("error") or item["msg"])
            else:
                text = _FIELD_MESSAGES.get(item["type"], "Недопустимое значение")
            errors.setdefault(field, _t(text))
        raise ConfigInvalid(errors) from None


def get_or_create_config(owner_id: int) -> AmoConfig:
    """The owner's settings row, created with defaults (Redirect URI from PUBLIC_URL) if new."""
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is not None:
        return cfg
    cfg = AmoConfig(owner_id=owner_id, redirect_uri=default_redirect_uri())
    db.session.add(cfg)
    try:
        db.session.commit()
    except IntegrityError:  # another request created it a moment ago
        db.session.rollback()
        cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
        if cfg is None:
            raise
    return cfg


def _check_lead_target(owner_id: int, data: ConfigInput) -> dict[str, str]:
    """The pipeline/status pair must exist in the mirror (when the mirror knows the account)."""
    errors: dict[str, str] = {}
    pipeline_id, status_id = data.lead_pipeline_id, data.lead_status_id
    if status_id is not None and pipeline_id is None:
        errors["lead_pipeline_id"] = _t("Выберите воронку для статуса")
        return errors
    if pipeline_id is None:
        return errors
    known = db.session.scalar(select(Pipeline.id).where(Pipeline.owner_id == owner_id).limit(1))
    if known is None:
        return errors  # not synced yet: nothing to check against
    if db.session.get(Pipeline, (owner_id, pipeline_id)) is None:
        errors["lead_pipeline_id"] = _t("Такой воронки нет в аккаунте")
        return errors
    if status_id is None:
        return errors
    statuses = {
        s.id: s
        for s in db.session.scalars(
            select(PipelineStatus).where(
                PipelineStatus.owner_id == owner_id, PipelineStatus.pipeline_id == pipeline_id
            )
        )
    }
    if statuses and status_id not in statuses:
        errors["lead_status_id"] = _t("Этот статус не принадлежит выбранной воронке")
    elif status_id in statuses and statuses[status_id].type == UNSORTED_STATUS_TYPE:
        errors["lead_status_id"] = _t("В «Неразобранное» нельзя создавать сделки через API")
    return errors


def _check_responsible(owner_id: int, data: ConfigInput) -> dict[str, str]:
    user_id = data.lead_responsible_user_id
    if user_id is None:
        return {}
    known = db.session.scalar(select(AmoUser.id).where(AmoUser.owner_id == owner_id).limit(1))
    if known is not None and db.session.get(AmoUser, (owner_id, user_id)) is None:
        return {"lead_responsible_user_id": _t("Такого пользователя нет в аккаунте")}
    return {}


def update_config(owner_id: int, data: ConfigInput) -> AmoConfig:
    """Apply validated settings; an empty client secret keeps the stored one.

    Pointing a connected owner at another account or integration forgets the old tokens: they
    belong to the previous account and would only earn 401s on the new host.
    """
    errors = _check_lead_target(owner_id, data) | _check_responsible(owner_id, data)
    if errors:
        raise ConfigInvalid(errors)
    cfg = get_or_create_config(owner_id)
    identity_before = (cfg.subdomain, cfg.domain, cfg.client_id)
    cfg.subdomain = data.subdomain
    cfg.domain = data.domain
    cfg.client_id = data.client_id
    if data.client_secret:
        cfg.client_secret = data.client_secret
    cfg.redirect_uri = data.redirect_uri or default_redirect_uri()
    cfg.sync_contacts = data.sync_contacts
    cfg.sync_leads = data.sync_leads
    cfg.sync_tasks = data.sync_tasks
    cfg.auto_create_lead = data.auto_create_lead
    cfg.new_deal_when_closed = data.new_deal_when_closed
    cfg.lead_pipeline_id = data.lead_pipeline_id
    cfg.lead_status_id = data.lead_status_id
    cfg.lead_responsible_user_id = data.lead_responsible_user_id
    changed_account = identity_before != (cfg.subdomain, cfg.domain, cfg.client_id)
    had_tokens = token_store.load_tokens(owner_id) is not None
    if changed_account and had_tokens and any(identity_before):
        token_store.delete_tokens(owner_id)
        cfg.status = ConnectionStatus.DISCONNECTED
        cfg.connected_at = None
        cfg.last_error = _n("Аккаунт или интеграция изменены: подключите amoCRM заново")
        cfg.last_error_at = datetime.now(UTC)
        logger.info("owner %s switched amoCRM account/integration; old tokens dropped", owner_id)
    db.session.commit()
    logger.info("owner %s saved amoCRM settings (subdomain %s)", owner_id, cfg.subdomain)
    return cfg


def config_values(cfg: AmoConfig) -> dict[str, Any]:
    """The settings as plain values for forms and JSON: the secret only as a "set" marker."""
    return {
        "subdomain": cfg.subdomain,
        "domain": cfg.domain,
        "client_id": cfg.client_id,
        "client_secret_set": bool(cfg.client_secret),
        "redirect_uri": cfg.redirect_uri or default_redirect_uri(),
        "sync_contacts": cfg.sync_contacts,
        "sync_leads": cfg.sync_leads,
        "sync_tasks": cfg.sync_tasks,
        "auto_create_lead": cfg.auto_create_lead,
        "new_deal_when_closed": cfg.new_deal_when_closed,
        "lead_pipeline_id": cfg.lead_pipeline_id,
        "lead_status_id": cfg.lead_status_id,
        "lead_responsible_user_id": cfg.lead_responsible_user_id,
    }


@dataclass(frozen=True)
class SettingsForm:
    """The settings form: values (stored, or as just submitted), errors and the choice lists."""

    form: dict[str, Any]
    errors: dict[str, str]
    secret_set: bool
    pipelines: list[Pipeline]
    statuses: list[PipelineStatus]
    amo_users: list[AmoUser]
    domains: tuple[str, ...]
    default_redirect: str


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def settings_form(
    owner_id: int,
    values: Mapping[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> SettingsForm:
    """The form as stored, or with ``values`` a person submitted (never the secret itself)."""
    stored = config_values(get_or_create_config(owner_id))
    form = dict(stored)
    if values:
        form.update({k: v for k, v in values.items() if k != "client_secret"})
    return SettingsForm(
        form=form,
        errors=errors or {},
        secret_set=bool(stored["client_secret_set"]),
        pipelines=active_pipelines(owner_id),
        statuses=target_statuses(owner_id, _positive_int(form.get("lead_pipeline_id"))),
        amo_users=active_users(owner_id),
        domains=tuple(ALLOWED_DOMAINS),
        default_redirect=default_redirect_uri(),
    )
