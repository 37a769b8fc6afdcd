"""Which amoCRM custom fields inbound fills: looked up once per owner and cached in the DB."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy.exc import IntegrityError

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMAPIError
from crm_app.extensions import db
from crm_app.models.inbound import InboundFieldMap

logger = logging.getLogger(__name__)

DEFAULT_TTL = 6 * 3600
# After a failed lookup, try again this much later rather than on every request.
RETRY_AFTER_FAILURE = 300

_TELEGRAM_ID_CODES = {"TELEGRAM_ID", "TG_ID", "TELEGRAM_USER_ID"}
_TELEGRAM_ID_NAMES = {"telegram id", "telegram user id", "id telegram", "telegram_id", "tg id"}
_TELEGRAM_USER_CODES = {"TELEGRAM_USERNAME", "TG_USERNAME"}
_TELEGRAM_USER_NAMES = {"telegram username", "telegram_username", "username telegram", "telegram"}
_SOURCE_NAMES = {"источник", "source", "lead source", "источник сделки"}
_PAGE_CODES = {"PAGE_URL", "FORM_PAGE", "LANDING_PAGE"}
_PAGE_NAMES = {"page_url", "страница", "page", "landing page", "страница заявки"}
SOURCE_WORDS = {
    "telegram": ("telegram", "телеграм", "телеграмм"),
    "widget": ("сайт", "website", "site", "widget", "виджет", "форма на сайте"),
}


def _setting(name: str, default: int) -> int:
    value = current_app.config.get(name)
    if value in (None, ""):
        value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _name(field: Mapping[str, Any]) -> str:
    return str(field.get("name") or "").strip().lower()


def _code(field: Mapping[str, Any]) -> str:
    return str(field.get("code") or "").strip().upper()


def _fid(field: Mapping[str, Any]) -> int | None:
    value = field.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pick(
    fields: Sequence[Mapping[str, Any]], codes: set[str], names: set[str], types: set[str]
) -> int | None:
    usable = [f for f in fields if _fid(f) is not None and (not types or f.get("type") in types)]
    for field in usable:  # a code is the strongest signal
        if _code(field) in codes:
            return _fid(field)
    for field in usable:
        if _name(field) in names:
            return _fid(field)
    return None


def build_map(contacts: list[dict[str, Any]], leads: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce the two custom-field lists to the ids inbound writes."""
    text_types = {"text", "textarea", "numeric"}
    mapping: dict[str, Any] = {
        "telegram_id": _pick(contacts, _TELEGRAM_ID_CODES, _TELEGRAM_ID_NAMES, text_types),
        "telegram_username": _pick(
            contacts, _TELEGRAM_USER_CODES, _TELEGRAM_USER_NAMES, text_types
        ),
        "page_url": _pick(leads, _PAGE_CODES, _PAGE_NAMES, {"text", "url", "textarea"}),
    }
    utm: dict[str, int] = {}
    for field in leads:
        fid = _fid(field)
        if fid is None:
            continue
        # amoCRM's tracking fields carry codes UTM_SOURCE, ..., GCLID, YCLID, REFERRER.
        if field.get("type") == "tracking_data" and _code(field):
            utm.setdefault(_code(field).lower(), fid)
        elif _name(field).startswith("utm_") and field.get("type") in text_types | {"url"}:
            utm.setdefault(_name(field), fid)
    mapping["utm"] = utm
    source: dict[str, Any] | None = None
    for field in leads:
        if _fid(field) is None or field.get("type") not in ("select", "radiobutton"):
            continue
        if _name(field) not in _SOURCE_NAMES:
            continue
        enums: dict[str, int] = {}
        for channel, words in SOURCE_WORDS.items():
            for enum in field.get("enums") or ():
                if str(enum.get("value") or "").strip().lower() in words and enum.get("id"):
                    enums.setdefault(channel, int(enum["id"]))
        source = {"field_id": _fid(field), "enums": enums}
        break
    mapping["source"] = source
    return mapping


def get_field_map(
    owner_id: int, client: Callable[[], AmoCRMClient], *, refresh: bool = False
) -> dict[str, Any]:
    """The owner's field map; fetched from amoCRM (2 calls) only when missing or `refresh`."""
    row = db.session.get(InboundFieldMap, owner_id)
    now = datetime.now(UTC)
    ttl = timedelta(seconds=_setting("INBOUND_FIELDS_TTL", DEFAULT_TTL))
    if row is not None and not refresh:
        # A stale catalogue is still used: the beat reads it again (refresh_stale), so no
        # first contact waits for two extra requests.
        return dict(row.data or {})
    try:
        api = client()
        data = build_map(api.get_custom_fields("contacts"), api.get_custom_fields("leads"))
        fetched_at = now
    except AmoCRMAPIError as exc:
        if row is None:
            # Nothing to fall back on: creating a contact without its Telegram ID field would
            # lose the dedup key for good, so the caller retries later instead.
            raise
        logger.warning("custom fields of owner %s not readable, using the cached ones", owner_id)
        data = dict(row.data or {})
        # Looked at again after a short pause: no lookup storm while amoCRM is down.
        fetched_at = now - ttl + timedelta(seconds=RETRY_AFTER_FAILURE)
        logger.debug("field lookup error: %s", exc)
    if row is None:
        row = InboundFieldMap(owner_id=owner_id)
        db.session.add(row)
    row.data = data
    row.fetched_at = fetched_at
    try:
        db.session.commit()
    except IntegrityError:  # another worker stored the map a moment ago; ours is as good
        db.session.rollback()
    return dict(data)


def forget_field_map(owner_id: int) -> None:
    """Drop the cached map (a write said a field id is gone)."""
    row = db.session.get(InboundFieldMap, owner_id)
    if row is not None:
        db.session.delete(row)
        db.session.commit()


def load_field_map(owner_id: int) -> dict[str, Any]:
    """Read the catalogue now (on connect), so the first lead costs no extra requests."""
    from crm_app.services.amo import client_for_owner

    return get_field_map(owner_id, lambda: client_for_owner(owner_id), refresh=True)


def refresh_stale(limit: int = 50) -> int:
    """Beat: read again the catalogues older than INBOUND_FIELDS_TTL; returns how many."""
    from sqlalchemy import select

    ttl = timedelta(seconds=_setting("INBOUND_FIELDS_TTL", DEFAULT_TTL))
    cutoff = datetime.now(UTC) - ttl
    owners = list(
        db.session.scalars(
            select(InboundFieldMap.owner_id)
            .where(InboundFieldMap.fetched_at < cutoff)
            .order_by(InboundFieldMap.fetched_at)
            .limit(limit)
        )
    )
    done = 0
    for owner_id in owners:
        try:
            load_field_map(owner_id)
            done += 1
        except Exception as exc:  # one owner's outage must not stop the others
            db.session.rollback()
            logger.info("field catalogue of owner %s not refreshed: %s", owner_id, exc)
    return done
