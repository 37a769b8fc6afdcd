"""What inbound writes to amoCRM: the ``leads/complex`` item of a person and their notes' text.

A *unit* is one human inside a batch: every request that shares a person, Telegram id, phone or
e-mail (see ``groups``). Its contact is built from all of them: the first name given, the first
phone, the first e-mail, the Telegram id of a Telegram request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crm_app.amocrm.fields import email_field, normalize_phone, phone_field, text_field
from crm_app.models import AmoConfig, InboundRequest
from crm_app.models.inbound import InboundOutcome

CHANNEL_LABELS = {"telegram": "Telegram", "widget": "Сайт"}
MAX_VALUES = 40  # amoCRM takes at most 40 custom-field values per entity in one complex item


def display_name(payload: dict[str, Any], external_id: str) -> str:
    for key in ("name", "username", "phone", "email"):
        value = payload.get(key)
        if value:
            return f"@{value}" if key == "username" else str(value)
    return external_id


def _first(requests: Sequence[InboundRequest], key: str) -> Any:
    for req in requests:
        value = req.payload.get(key)
        if value:
            return value
    return None


def contact_item(
    requests: Sequence[InboundRequest], cfg: AmoConfig, fields: dict[str, Any], *, plain: bool
) -> dict[str, Any]:
    """The new contact of a unit; ``plain`` keeps only PHONE and EMAIL (a field id was refused)."""
    first = requests[0]
    named = next((r for r in requests if r.payload.get("name")), first)
    item: dict[str, Any] = {"name": display_name(named.payload, named.external_id)[:255]}
    for key in ("first_name", "last_name"):
        value = _first(requests, key)
        if value:
            item[key] = value
    if cfg.lead_responsible_user_id:
        item["responsible_user_id"] = int(cfg.lead_responsible_user_id)
    values: list[dict[str, Any]] = []
    phone_req = next((r for r in requests if normalize_phone(r.payload.get("phone"))), None)
    if phone_req is not None:
        phone = normalize_phone(phone_req.payload.get("phone"))
        assert phone is not None
        values.append(phone_field(phone, "MOB" if phone_req.channel == "telegram" else "WORK"))
    email = _first(requests, "email")
    if email:
        values.append(email_field(str(email), "WORK"))
    telegram = next((r for r in requests if r.channel == "telegram"), None)
    if telegram is not None and not plain:
        if fields.get("telegram_id"):
            values.append(text_field(telegram.external_id, field_id=int(fields["telegram_id"])))
        username = telegram.payload.get("username")
        if username and fields.get("telegram_username"):
            values.append(text_field(username, field_id=int(fields["telegram_username"])))
    if values:
        item["custom_fields_values"] = values[:MAX_VALUES]
    return item


def lead_values(req: InboundRequest, fields: dict[str, Any]) -> list[dict[str, Any]]:
    """UTM tags, the page URL and the channel in the account's lead fields, when it has them."""
    values: list[dict[str, Any]] = []
    utm_ids: dict[str, int] = fields.get("utm") or {}
    for key, value in (req.payload.get("utm") or {}).items():
        fid = utm_ids.get(key.lower())
        if fid and value:
            values.append(text_field(str(value)[:255], field_id=int(fid)))
    page = req.payload.get("page_url")
    if page and fields.get("page_url"):
        values.append(text_field(str(page)[:2000], field_id=int(fields["page_url"])))
    source = fields.get("source") or {}
    enum_id = (source.get("enums") or {}).get(req.channel)
    if source.get("field_id") and enum_id:
        values.append({"field_id": int(source["field_id"]), "values": [{"enum_id": int(enum_id)}]})
    return values[:MAX_VALUES]


def lead_item(
    requests: Sequence[InboundRequest],
    ref: str,
    cfg: AmoConfig,
    fields: dict[str, Any],
    contact_id: int | None,
    stamp: int,
    *,
    plain: bool = False,
) -> dict[str, Any]:
    """One ``leads/complex`` item: the deal, with the unit's new contact or ``{id}`` of a known one.

    ``request_id`` is the person's ref: amoCRM echoes it, which is how each answer is matched to
    its unit. The ref is also in the deal name, so a deal whose answer was lost can be found.
    ``created_at``/``updated_at`` are our version stamp for echo suppression.
    """
    first = requests[0]
    label = CHANNEL_LABELS.get(first.channel, first.channel)
    named = next((r for r in requests if r.payload.get("name")), first)
    name = display_name(named.payload, named.external_id)[:200]
    item: dict[str, Any] = {
        "name": f"{label}: {name} [{ref}]",
        "request_id": ref,
        "tags_to_add": [{"name": label}],
        "created_at": stamp,
        "updated_at": stamp,
    }
    if cfg.lead_pipeline_id:
        item["pipeline_id"] = int(cfg.lead_pipeline_id)
    if cfg.lead_status_id:
        item["status_id"] = int(cfg.lead_status_id)
    if cfg.lead_responsible_user_id:
        item["responsible_user_id"] = int(cfg.lead_responsible_user_id)
    if not plain:
        values = lead_values(first, fields)
        if values:
            item["custom_fields_values"] = values
    if contact_id:
        contact: dict[str, Any] = {"id": int(contact_id)}
    else:
        contact = contact_item(requests, cfg, fields, plain=plain)
        contact.update(created_at=stamp, updated_at=stamp)
    item["_embedded"] = {"contacts": [contact]}
    return item


def note_text(req: InboundRequest) -> str | None:
    """The note a message becomes; the first message of a new deal also carries page and UTM."""
    payload = req.payload
    message = (payload.get("message") or "").strip()
    first = req.outcome in (InboundOutcome.NEW, InboundOutcome.NEW_DEAL)
    label = CHANNEL_LABELS.get(req.channel, req.channel)
    lines: list[str] = []
    who = f" (@{payload['username']})" if payload.get("username") else ""
    if message:
        head = "Первое сообщение" if first else "Сообщение"
        lines += [f"{head} из канала «{label}»{who}:", message]
    if first:
        extra = []
        if payload.get("page_url"):
            extra.append(f"Страница: {payload['page_url']}")
        utm = payload.get("utm") or {}
        if utm:
            extra.append("UTM: " + ", ".join(f"{k}={v}" for k, v in sorted(utm.items())))
        if extra:
            lines += ["", *extra] if lines else [f"Заявка из канала «{label}»{who}", *extra]
    return "\n".join(lines)[:20_000] if lines else None
