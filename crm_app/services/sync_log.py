"""The sync log as read by the page and the API: one listing, one masking rule, one summary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.logging_setup import mask_secrets
from crm_app.models import SyncLog
from crm_app.services.inbound.views import CHANNEL_LABELS, OUTCOME_LABELS

_SECRET_SUFFIXES = ("token", "secret", "password", "authorization", "authorization_code")
SUMMARY_MAX = 400

OPERATION_LABELS = {
    "sync_contacts": _n("Синхронизация контактов"),
    "sync_leads": _n("Синхронизация сделок"),
    "sync_tasks": _n("Синхронизация задач"),
    "sync_lead_notes": _n("Синхронизация примечаний сделок"),
    "sync_contact_notes": _n("Синхронизация примечаний контактов"),
    "sync_reference": _n("Справочники"),
    "create_lead": _n("Создание сделки"),
    "webhook": _n("Вебхук"),
    "connect": _n("Подключение"),
    "disconnect": _n("Отключение"),
    "disconnect_hook": _n("Отключено в amoCRM"),
}
_MODES = {
    "full": _n("полная"),
    "incremental": _n("изменения с прошлого раза"),
    "reconcile": _n("сверка"),
}
_CONNECT_VIA = {
    "oauth": _n("через OAuth"),
    "code": _n("кодом авторизации"),
    "long_lived_token": _n("долгосрочным токеном"),
}


@dataclass(frozen=True)
class LogEntry:
    """One row of the log; ``details`` are the stored data with secrets masked."""

    timestamp: datetime
    operation: str
    status: str
    details: Any
    run_id: int | None

    @property
    def label(self) -> str:
        """The operation in words (the page's language)."""
        label = OPERATION_LABELS.get(self.operation)
        return _t(label) if label else self.operation

    @property
    def summary(self) -> str:
        """What a person wants to read about this entry (the API keeps the raw ``details``)."""
        return summarize(self.operation, self.status, self.details)


@dataclass(frozen=True)
class LogPage:
    items: list[LogEntry]
    total: int
    limit: int
    offset: int


def list_log(
    owner_id: int,
    *,
    limit: int,
    offset: int = 0,
    operation: str | None = None,
    status: str | None = None,
) -> LogPage:
    """The owner's log, newest first, optionally one operation or status only."""
    stmt = select(SyncLog).where(SyncLog.owner_id == owner_id)
    if operation:
        stmt = stmt.where(SyncLog.operation == operation)
    if status:
        stmt = stmt.where(SyncLog.status == status)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.session.scalars(
        stmt.order_by(SyncLog.timestamp.desc(), SyncLog.id.desc()).limit(limit).offset(offset)
    ).all()
    items = [
        LogEntry(
            timestamp=r.timestamp,
            operation=r.operation,
            status=r.status,
            details=mask_details(r.details),
            run_id=r.run_id,
        )
        for r in rows
    ]
    return LogPage(items=items, total=int(total), limit=limit, offset=offset)


def _secret_key(key: object) -> bool:
    k = str(key).lower()
    return k == "code" or k.endswith(_SECRET_SUFFIXES)


def mask_details(value: Any) -> Any:
    """Details as stored, with anything secret-shaped masked in case a writer put one there."""
    if isinstance(value, dict):
        return {k: "***" if _secret_key(k) else mask_details(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_details(v) for v in value]
    if isinstance(value, str):
        return mask_secrets(value)
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return ""
    if seconds < 60:
        return _t("%(n).1f с", n=float(seconds))
    minutes, secs = divmod(round(seconds), 60)
    return _t("%(m)d мин %(s)d с", m=minutes, s=secs)


def _sync_summary(status: str, d: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    mode = _MODES.get(str(d.get("mode")))
    if mode:
        parts.append(_t(mode))
    if d.get("skipped"):
        parts.append(_t("не начата"))
    records, deleted = _int(d.get("records")), _int(d.get("deleted"))
    created, changed = d.get("created"), d.get("changed")
    if isinstance(created, int) and isinstance(changed, int):
        if status == "success" and not (created or changed or deleted):
            parts.append(_t("изменений нет"))
        else:
            parts.append(
                _t(
                    "создано %(c)d, изменено %(u)d, удалено %(d)d",
                    c=created,
                    u=changed,
                    d=deleted,
                )
            )
    elif status == "success" and not records and not deleted:
        parts.append(_t("изменений нет"))
    elif records or deleted:
        parts.append(_t("получено записей: %(r)d, удалено: %(d)d", r=records, d=deleted))
    duration = _duration(d.get("duration_s"))
    if duration:
        parts.append(duration)
    if d.get("filter_ignored"):
        parts.append(_t("фильтр amoCRM не применился: прочитано всё"))
    return parts


def _webhook_summary(d: dict[str, Any]) -> list[str]:
    parts = [_t("доставок: %(n)d", n=_int(d.get("deliveries")))]
    if "changes" in d:
        parts.append(_t("изменений применено: %(n)d", n=_int(d.get("changes"))))
    if _int(d.get("duplicates")):
        parts.append(_t("повторов: %(n)d", n=_int(d.get("duplicates"))))
    if _int(d.get("passes")) > 1:
        parts.append(_t("пакетов: %(n)d", n=_int(d.get("passes"))))
    return parts


def _lead_summary(d: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for labels, key in ((CHANNEL_LABELS, "channel"), (OUTCOME_LABELS, "outcome")):
        label = labels.get(str(d.get(key)))
        if label:
            parts.append(_t(label))
    if d.get("lead_id"):
        parts.append(_t("сделка №%(id)s", id=d["lead_id"]))
    if d.get("contact_id"):
        parts.append(_t("контакт №%(id)s", id=d["contact_id"]))
    return parts


def summarize(operation: str, status: str, details: Any) -> str:
    """One readable line: what was done, how many, how long, and why it failed."""
    d = details if isinstance(details, dict) else {}
    if operation.startswith("sync_"):
        parts = _sync_summary(status, d)
    elif operation == "webhook":
        parts = _webhook_summary(d)
    elif operation == "create_lead":
        parts = _lead_summary(d)
    elif operation == "connect":
        via = _CONNECT_VIA.get(str(d.get("via")))
        parts = [_t(via)] if via else []
    else:
        parts = []
    error = d.get("error") if status == "error" else None
    if error:
        reason = _t("amoCRM не подключён") if error == "not connected" else _t(str(error))
        parts.append(_t("ошибка: %(reason)s", reason=reason))
    if not parts and not isinstance(details, dict) and details:
        parts.append(str(details))
    return mask_secrets("; ".join(parts))[:SUMMARY_MAX]
