"""Read models of inbound requests: the admin card and the status the widget/bot API returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.models import AmoConfig, ApiKey, InboundRequest, InboundStatus
from crm_app.models.inbound import InboundOutcome
from crm_app.services.inbound.keys import list_api_keys
from crm_app.services.inbound.processor import retry_request
from crm_app.services.inbound.telegram import masked_webhook_url

RECENT_LIMIT = 20

CHANNEL_LABELS = {"telegram": "Telegram", "widget": _n("виджет сайта")}
STATUS_LABELS = {
    InboundStatus.QUEUED: _n("в очереди"),
    InboundStatus.CREATED: _n("создана"),
    InboundStatus.FAILED: _n("ошибка"),
}
OUTCOME_LABELS = {
    InboundOutcome.NEW: _n("новый контакт и сделка"),
    InboundOutcome.NEW_DEAL: _n("новая сделка"),
    InboundOutcome.EXISTING_DEAL: _n("примечание к открытой сделке"),
    InboundOutcome.NOTE: _n("примечание к сделке"),
    InboundOutcome.DUPLICATE: _n("повтор, уже обработано"),
    InboundOutcome.DISABLED: _n("автосоздание сделок выключено"),
    InboundOutcome.NOT_CONNECTED: _n("amoCRM не подключён"),
    InboundOutcome.REJECTED: _n("отклонено amoCRM"),
    InboundOutcome.ERROR: _n("внутренняя ошибка"),
}


def _label(labels: dict[str, str], value: str | None) -> str:
    if not value:
        return "—"
    label = labels.get(value)
    return _t(label) if label else value


@dataclass(frozen=True)
class RequestView:
    """One inbound request as the API returns it."""

    id: str
    status: str
    channel: str
    contact_id: int | None
    lead_id: int | None
    outcome: str | None
    error: str | None
    attempts: int
    created_at: datetime | None
    processed_at: datetime | None

    @property
    def channel_label(self) -> str:
        return _label(CHANNEL_LABELS, self.channel)

    @property
    def status_label(self) -> str:
        return _label(STATUS_LABELS, self.status)

    @property
    def outcome_label(self) -> str:
        return _label(OUTCOME_LABELS, self.outcome)


def _view(req: InboundRequest) -> RequestView:
    return RequestView(
        id=req.public_id,
        status=req.status,
        channel=req.channel,
        contact_id=req.contact_id,
        lead_id=req.lead_id,
        outcome=req.outcome,
        error=req.error,
        attempts=req.attempts or 0,
        created_at=req.created_at,
        processed_at=req.processed_at,
    )


def _find(owner_id: int, public_id: str) -> InboundRequest | None:
    try:
        uuid.UUID(public_id)
    except ValueError:
        return None
    return db.session.scalar(
        select(InboundRequest).where(
            InboundRequest.public_id == public_id, InboundRequest.owner_id == owner_id
        )
    )


def request_view(owner_id: int, public_id: str) -> RequestView | None:
    """One request of this owner; another owner's id (or no uuid at all) is simply not found."""
    req = _find(owner_id, public_id)
    return _view(req) if req is not None else None


def retry(owner_id: int, public_id: str) -> bool | None:
    """Queue a failed request again; None when the owner has no such request."""
    req = _find(owner_id, public_id)
    return retry_request(req) if req is not None else None


@dataclass(frozen=True)
class InboundPanel:
    """The admin card: API keys, endpoints, recent requests and their counts by status."""

    keys: list[ApiKey]
    requests: list[RequestView]
    counts: dict[str, int]
    auto_create: bool
    telegram_url: str | None
    telegram_set: bool


def inbound_panel(owner_id: int) -> InboundPanel:
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    rows = db.session.scalars(
        select(InboundRequest)
        .where(InboundRequest.owner_id == owner_id)
        .order_by(InboundRequest.id.desc())
        .limit(RECENT_LIMIT)
    )
    counts: dict[str, int] = {
        status: int(n)
        for status, n in db.session.execute(
            select(InboundRequest.status, func.count())
            .where(InboundRequest.owner_id == owner_id)
            .group_by(InboundRequest.status)
        )
    }
    return InboundPanel(
        keys=list_api_keys(owner_id),
        requests=[_view(r) for r in rows],
        counts={s: int(counts.get(s, 0)) for s in STATUS_LABELS},
        auto_create=bool(cfg and cfg.auto_create_lead),
        telegram_url=masked_webhook_url(cfg),
        telegram_set=bool(cfg and cfg.telegram_secret),
    )
