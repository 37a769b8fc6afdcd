"""Processing one inbound request: find or create the amoCRM contact and deal, exactly once.

The anchor is ``InboundPerson`` (unique per owner, channel and external id). Every request of a
person runs under that person's lock (plus locks on its phone and e-mail, so two channels of one
human cannot race), re-reads the person inside the lock, and only then talks to amoCRM:

* the person already has a deal → the message becomes a note on it (or, when that deal is closed
  and the owner wants it, a new deal for the same contact);
* an earlier ``leads/complex`` call got no answer → the deal is looked up by the person's ``ref``
  (carried in the deal name) before anything is created again;
* a matching contact already exists (Telegram ID, then phone, then e-mail; the local mirror
  first, the API only while the mirror has never been synced) → its open deal gets the note, or a
  new deal is attached to it;
* otherwise one ``leads/complex`` call creates contact and deal together.

A copy of a message that was already handled (same person, same content, within a window)
is marked ``duplicate`` and costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy import select

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMConfigError,
    AmoCRMNotFound,
    AmoCRMPaymentRequired,
    AmoCRMRateLimited,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
    AmoCRMValidationError,
    ThrottleUnavailable,
)
from crm_app.amocrm.fields import (
    email_field,
    field_value,
    get_emails,
    normalize_email,
    normalize_phone,
    phone_field,
    text_field,
)
from crm_app.extensions import db
from crm_app.models import (
    AmoConfig,
    Contact,
    InboundPerson,
    InboundRequest,
    InboundStatus,
    Lead,
    SyncCursor,
    SyncLog,
)
from crm_app.models.inbound import InboundOutcome
from crm_app.services.echo import remember_own_writes
from crm_app.services.inbound.fields import forget_field_map, get_field_map
from crm_app.services.inbound.intake import STALE_AFTER_SECONDS, enqueue, get_or_create_person
from crm_app.services.locks import LockTimeout, named_lock

logger = logging.getLogger(__name__)

CLOSED_STATUSES = (142, 143)
CHANNEL_LABELS = {"telegram": "Telegram", "widget": "Сайт"}
LOG_OPERATION = "create_lead"

# Defaults of the INBOUND_* settings (app config first, then the environment).
DEFAULTS = {
    "INBOUND_RETRY_BASE_SECONDS": 10,
    "INBOUND_RETRY_MAX_SECONDS": 900,
    "INBOUND_DUPLICATE_WINDOW_SECONDS": 900,
    "INBOUND_LOCK_TTL_SECONDS": 300,
    "INBOUND_LOCK_WAIT_SECONDS": 30,
    # How long an unanswered leads/complex may still be in flight at amoCRM.
    "INBOUND_CREATE_GRACE_SECONDS": 60,
    "INBOUND_BLOCKED_RETRY_SECONDS": 600,
}


def setting(name: str) -> int:
    """An INBOUND_* integer setting: app config, then environment, then the default."""
    value = current_app.config.get(name)
    if value in (None, ""):
        value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else DEFAULTS[name]
    except (TypeError, ValueError):
        return DEFAULTS[name]


@dataclass(frozen=True)
class Result:
    """What one processing attempt ended with; ``retry_in`` is set when it should run again."""

    status: str
    retry_in: float | None = None


class _Retry(Exception):
    """Try again later (amoCRM down, rate limited, blocked; a lock held elsewhere)."""

    def __init__(self, message: str, delay: float | None = None, *, log: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay
        self.log = log


class _Fail(Exception):
    """Give up on this request (no connection, Auto Create Lead off, data refused)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:20]


class _Context:
    """One request's view of the owner: config, a lazily built client, the field map."""

    def __init__(self, owner_id: int, cfg: AmoConfig) -> None:
        self.owner_id = owner_id
        self.cfg = cfg
        self._client: AmoCRMClient | None = None
        self._fields: dict[str, Any] | None = None

    def client(self) -> AmoCRMClient:
        if self._client is None:
            from crm_app.services.amo import NotConfigured, client_for_owner

            try:
                self._client = client_for_owner(self.owner_id)
            except (NotConfigured, AmoCRMConfigError) as exc:
                raise _Fail(InboundOutcome.NOT_CONNECTED, f"amoCRM is not set up: {exc}") from exc
        return self._client

    def fields(self) -> dict[str, Any]:
        if self._fields is None:
            self._fields = get_field_map(self.owner_id, self.client)
        return self._fields

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- amoCRM errors → retry or fail --------------------------------------------------------------


def _backoff(attempts: int) -> float:
    base = setting("INBOUND_RETRY_BASE_SECONDS")
    return float(min(setting("INBOUND_RETRY_MAX_SECONDS"), base * 2 ** max(0, attempts - 1)))


@contextlib.contextmanager
def _amo(owner_id: int, attempts: int, what: str) -> Iterator[None]:
    """Translate client errors: transient ones retry with backoff, the rest fail the request."""
    from crm_app.services.amo import record_api_failure
    from crm_app.services.tokens import NotConnected

    try:
        yield
    except (_Retry, _Fail):
        raise
    except NotConnected as exc:
        raise _Fail(InboundOutcome.NOT_CONNECTED, "amoCRM is not connected") from exc
    except (AmoCRMTokenExpired, AmoCRMAuthError) as exc:
        record_api_failure(owner_id, exc)
        raise _Fail(InboundOutcome.NOT_CONNECTED, f"{what}: amoCRM authorisation failed") from exc
    except AmoCRMRateLimited as exc:
        delay = max(_backoff(attempts), float(exc.retry_after or 0))
        raise _Retry(f"{what}: amoCRM rate limit (429)", delay) from exc
    except (AmoCRMBlocked, AmoCRMPaymentRequired) as exc:
        # A block or an unpaid account is lifted by people, not by hammering: retry slowly.
        record_api_failure(owner_id, exc)
        delay = float(setting("INBOUND_BLOCKED_RETRY_SECONDS"))
        raise _Retry(f"{what}: amoCRM refused access (HTTP {exc.status})", delay) from exc
    except AmoCRMUnavailable as exc:
        raise _Retry(f"{what}: amoCRM unavailable ({exc.message})", _backoff(attempts)) from exc
    except (AmoCRMValidationError, AmoCRMNotFound) as exc:
        raise _Fail(InboundOutcome.REJECTED, f"{what}: {exc.message}") from exc
    except AmoCRMAPIError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            raise _Fail(InboundOutcome.REJECTED, f"{what}: {exc.message}") from exc
        raise _Retry(f"{what}: {exc.message}", _backoff(attempts)) from exc


# -- the entry point ----------------------------------------------------------------------------


def lock_names(req: InboundRequest) -> list[str]:
    """The locks one request takes, in a global order (no deadlocks between two of them)."""
    owner = req.owner_id
    names = {f"inbound-{owner}-person-{req.person_id}"}
    phone = normalize_phone(req.payload.get("phone"))
    if phone:
        names.add(f"inbound-{owner}-phone-{_digest(phone)}")
    email = normalize_email(req.payload.get("email"))
    if email:
        names.add(f"inbound-{owner}-email-{_digest(email)}")
    return sorted(names)


def process(request_id: int) -> Result:
    """Process one stored request; safe to call any number of times, concurrently too."""
    req = db.session.get(InboundRequest, request_id)
    if req is None:
        return Result("missing")
    if req.status != InboundStatus.QUEUED:
        return Result(req.status)
    if req.person_id is None:
        req.person_id = get_or_create_person(req.owner_id, req.channel, req.external_id).id
        db.session.commit()
    ttl = float(setting("INBOUND_LOCK_TTL_SECONDS"))
    wait = float(setting("INBOUND_LOCK_WAIT_SECONDS"))
    try:
        with contextlib.ExitStack() as stack:
            for name in lock_names(req):
                stack.enter_context(named_lock(name, ttl=ttl, wait=wait))
            # Inside the locks: forget what this session read before and look again.
            db.session.rollback()
            db.session.expire_all()
            req = db.session.get(InboundRequest, request_id)
            if req is None or req.status != InboundStatus.QUEUED:
                return Result(req.status if req else "missing")
            req.attempts = (req.attempts or 0) + 1
            # While this attempt runs, the beat must not hand the request to another worker.
            req.next_attempt_at = _now() + timedelta(seconds=ttl + 60)
            db.session.commit()
            return _run(req)
    except LockTimeout:
        db.session.rollback()
        req = db.session.get(InboundRequest, request_id)
        if req is None:
            return Result("missing")
        return _retry_later(
            req, _Retry("waiting for another message of this person", 5.0, log=False)
        )


def _run(req: InboundRequest) -> Result:
    from crm_app.services.amo import get_config

    began = _now()

    cfg = get_config(req.owner_id)
    if cfg is None or not cfg.auto_create_lead:
        return _fail(
            req,
            _Fail(
                InboundOutcome.DISABLED,
                "Auto Create Lead is off: the request is stored but was not sent to amoCRM",
            ),
        )
    ctx = _Context(req.owner_id, cfg)
    try:
        if req.lead_id is None:
            if _take_duplicate(req):
                return _done(req)
            person = db.session.get(InboundPerson, req.person_id)
            if person is None:  # pragma: no cover - the FK keeps it while the request exists
                raise _Fail(InboundOutcome.ERROR, "inbound person vanished")
            _resolve(req, person, ctx)
        if not req.note_added:
            _note(req, ctx)
        return _done(req, began)
    except _Retry as exc:
        db.session.rollback()
        return _retry_later(req, exc)
    except _Fail as exc:
        db.session.rollback()
        return _fail(req, exc)
    except Exception:
        db.session.rollback()
        logger.exception("inbound request %s failed unexpectedly", req.id)
        return _retry_later(req, _Retry("internal error; it has been logged"))
    finally:
        ctx.close()


# -- steps ------------------------------------------------------------------------------------------


def _take_duplicate(req: InboundRequest) -> bool:
    """True (and the request filled in) when this very message was already handled."""
    window = timedelta(seconds=setting("INBOUND_DUPLICATE_WINDOW_SECONDS"))
    other = db.session.scalar(
        select(InboundRequest)
        .where(
            InboundRequest.person_id == req.person_id,
            InboundRequest.fingerprint == req.fingerprint,
            InboundRequest.id != req.id,
            InboundRequest.status != InboundStatus.FAILED,
            InboundRequest.lead_id.is_not(None),
            InboundRequest.created_at >= req.created_at - window,
            InboundRequest.created_at <= req.created_at + window,
        )
        .order_by(InboundRequest.id)
        .limit(1)
    )
    if other is None:
        return False
    req.contact_id, req.lead_id = other.contact_id, other.lead_id
    req.outcome = InboundOutcome.DUPLICATE
    req.note_added = True  # the original carries the note
    db.session.commit()
    return True


def _resolve(req: InboundRequest, person: InboundPerson, ctx: _Context) -> None:
    """Decide contact and deal for the request, creating them in amoCRM when needed."""
    if person.lead_id is not None:
        if ctx.cfg.new_deal_when_closed and _deal_closed(req.owner_id, person.lead_id):
            _create_deal(req, person, ctx, person.contact_id, InboundOutcome.NEW_DEAL)
        else:
            _assign(req, person, person.contact_id, person.lead_id, InboundOutcome.NOTE)
        return
    if person.create_started_at is not None:
        found = _find_by_ref(req, person, ctx)
        if found is not None:
            lead_id, contact_id = found
            logger.info(
                "inbound person %s: unanswered create did happen (lead %s)", person.id, lead_id
            )
            _assign(req, person, contact_id, lead_id, InboundOutcome.NEW, created=True)
            return
        grace = timedelta(seconds=setting("INBOUND_CREATE_GRACE_SECONDS"))
        if _now() - person.create_started_at < grace:
            raise _Retry("an earlier create is not answered yet; checking again soon", 15.0)
        person.create_started_at = None
        db.session.commit()
    contact_id = person.contact_id or _match_contact(req, ctx)
    if contact_id is None:
        _create_deal(req, person, ctx, None, InboundOutcome.NEW)
        return
    lead_id = _open_deal_of(req, contact_id, ctx)
    if lead_id is not None:
        _assign(req, person, contact_id, lead_id, InboundOutcome.EXISTING_DEAL)
    else:
        _create_deal(req, person, ctx, contact_id, InboundOutcome.NEW_DEAL)


def _assign(
    req: InboundRequest,
    person: InboundPerson,
    contact_id: int | None,
    lead_id: int,
    outcome: str,
    *,
    created: bool = False,
) -> None:
    person.contact_id, person.lead_id = contact_id, lead_id
    person.create_started_at = None
    req.contact_id, req.lead_id, req.outcome = contact_id, lead_id, outcome
    db.session.commit()
    if created:
        _log(req, "success", {"recovered": True})


# -- looking things up ----------------------------------------------------------------------------


def _mirror_ready(owner_id: int, entity: str) -> bool:
    """True once a sync of ``entity`` has succeeded: from then on the mirror is trusted."""
    cursor = db.session.get(SyncCursor, (owner_id, entity))
    return cursor is not None and cursor.last_success_at is not None


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def _json_has(column: Any, value: Any) -> Any:
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.type_coerce(column, JSONB).contains([value])


def _mirror_contact(owner_id: int, kind: str, value: str) -> int | None:
    query = select(Contact.id).where(Contact.owner_id == owner_id)
    if kind == "telegram":
        query = query.where(Contact.telegram_id == value)
    elif kind == "phone":
        match = Contact.phone == value
        query = query.where(
            sa.or_(match, _json_has(Contact.phones, value)) if _is_postgres() else match
        )
    else:
        match = sa.func.lower(Contact.email) == value
        query = query.where(
            sa.or_(match, _json_has(Contact.emails, value)) if _is_postgres() else match
        )
    return db.session.scalar(query.order_by(Contact.id).limit(1))


def _identities(req: InboundRequest) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if req.channel == "telegram":
        out.append(("telegram", req.external_id))
    phone = normalize_phone(req.payload.get("phone"))
    if phone:
        out.append(("phone", phone))
    email = normalize_email(req.payload.get("email"))
    if email:
        out.append(("email", email))
    return out


def _match_contact(req: InboundRequest, ctx: _Context) -> int | None:
    """An existing amoCRM contact of this person: Telegram ID, then phone, then e-mail."""
    identities = _identities(req)
    for kind, value in identities:
        found = _mirror_contact(req.owner_id, kind, value)
        if found is not None:
            return found
    if _mirror_ready(req.owner_id, "contacts"):
        return None
    # Never synced: the mirror proves nothing, so ask amoCRM (each hit verified field by field).
    with _amo(req.owner_id, req.attempts, "contact search"):
        for kind, value in identities:
            found = _api_contact(ctx, kind, value)
            if found is not None:
                return found
    return None


def _api_contact(ctx: _Context, kind: str, value: str) -> int | None:
    client = ctx.client()
    if kind == "phone":
        hits = client.find_contacts_by_phone(value)  # query=national digits, PHONE verified
    elif kind == "email":
        hits = [
            c
            for c in client.search_contacts(value, max_pages=1)
            if value in {normalize_email(e) for e in get_emails(c)}
        ]
    else:
        field_id = ctx.fields().get("telegram_id")
        if not field_id:
            return None
        hits = [
            c
            for c in client.search_contacts(value, max_pages=1)
            if str(field_value(c, field_id=field_id, default="")).strip() == value
        ]
    ids = sorted(c["id"] for c in hits if isinstance(c.get("id"), int))
    return ids[0] if ids else None


def _deal_closed(owner_id: int, lead_id: int) -> bool:
    status = db.session.scalar(
        select(Lead.status_id).where(Lead.owner_id == owner_id, Lead.id == lead_id)
    )
    return status in CLOSED_STATUSES


def _open_deal_of(req: InboundRequest, contact_id: int, ctx: _Context) -> int | None:
    """The newest open deal of a contact: the mirror, or amoCRM while leads were never synced."""
    owner_id = req.owner_id
    linked = Lead.main_contact_id == contact_id
    if _is_postgres():
        linked = sa.or_(linked, _json_has(Lead.contact_ids, contact_id))
    rows = db.session.execute(
        select(Lead.id, Lead.status_id)
        .where(Lead.owner_id == owner_id, linked)
        .order_by(Lead.id.desc())
    ).all()
    open_ids = [r.id for r in rows if r.status_id not in CLOSED_STATUSES]
    if open_ids:
        return open_ids[0]
    if rows or _mirror_ready(owner_id, "leads"):
        return None
    with _amo(owner_id, req.attempts, "deal lookup"):
        client = ctx.client()
        contact = client.get_contact(contact_id, with_="leads") or {}
        embedded = contact.get("_embedded") or {}
        lead_ids = sorted(
            (i["id"] for i in embedded.get("leads") or () if isinstance(i.get("id"), int)),
            reverse=True,
        )
        for lead_id in lead_ids[:3]:  # ids grow with time: the newest deals first
            lead = client.get_lead(lead_id, with_=None)
            if lead and lead.get("status_id") not in CLOSED_STATUSES and not lead.get("is_deleted"):
                return lead_id
    return None


def _find_by_ref(
    req: InboundRequest, person: InboundPerson, ctx: _Context
) -> tuple[int, int | None] | None:
    """The deal an unanswered create made, found by the ref in its name (one search)."""
    with _amo(req.owner_id, req.attempts, "deal search"):
        page = ctx.client().get_leads(query=person.ref, limit=50, with_="contacts")
    for lead in page.items:
        if person.ref not in str(lead.get("name") or "").split("[")[-1]:
            continue
        contacts = (lead.get("_embedded") or {}).get("contacts") or []
        main = [c for c in contacts if c.get("is_main")] or contacts
        contact_id = main[0].get("id") if main else None
        return int(lead["id"]), contact_id
    return None


# -- creating ---------------------------------------------------------------------------------------


def _display_name(payload: dict[str, Any], external_id: str) -> str:
    for key in ("name", "username", "phone", "email"):
        value = payload.get(key)
        if value:
            return f"@{value}" if key == "username" else str(value)
    return external_id


def _contact_item(req: InboundRequest, ctx: _Context) -> dict[str, Any]:
    payload = req.payload
    cfg = ctx.cfg
    item: dict[str, Any] = {"name": _display_name(payload, req.external_id)[:255]}
    if payload.get("first_name"):
        item["first_name"] = payload["first_name"]
    if payload.get("last_name"):
        item["last_name"] = payload["last_name"]
    if cfg.lead_responsible_user_id:
        item["responsible_user_id"] = int(cfg.lead_responsible_user_id)
    values: list[dict[str, Any]] = []
    phone = normalize_phone(payload.get("phone"))
    if phone:
        values.append(phone_field(phone, "MOB" if req.channel == "telegram" else "WORK"))
    if payload.get("email"):
        values.append(email_field(str(payload["email"]), "WORK"))
    fields = ctx.fields()
    if req.channel == "telegram" and fields.get("telegram_id"):
        values.append(text_field(req.external_id, field_id=int(fields["telegram_id"])))
    if req.channel == "telegram" and payload.get("username") and fields.get("telegram_username"):
        values.append(text_field(payload["username"], field_id=int(fields["telegram_username"])))
    if values:
        item["custom_fields_values"] = values
    return item


def _lead_fields(req: InboundRequest, fields: dict[str, Any]) -> list[dict[str, Any]]:
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
    return values[:40]  # amoCRM takes at most 40 values per entity in one complex item


def _lead_item(
    req: InboundRequest,
    person: InboundPerson,
    ctx: _Context,
    contact_id: int | None,
    with_fields: bool,
) -> dict[str, Any]:
    cfg = ctx.cfg
    label = CHANNEL_LABELS.get(req.channel, req.channel)
    name = _display_name(req.payload, req.external_id)[:200]
    stamp = int(_now().timestamp())
    item: dict[str, Any] = {
        # The ref lets a retry find this deal if amoCRM never answered the create.
        "name": f"{label}: {name} [{person.ref}]",
        "request_id": person.ref,
        "tags_to_add": [{"name": label}],
        # Our own version stamp: the webhook echo of this write is recognised by it.
        "created_at": stamp,
        "updated_at": stamp,
    }
    if cfg.lead_pipeline_id:
        item["pipeline_id"] = int(cfg.lead_pipeline_id)
    if cfg.lead_status_id:
        item["status_id"] = int(cfg.lead_status_id)
    if cfg.lead_responsible_user_id:
        item["responsible_user_id"] = int(cfg.lead_responsible_user_id)
    if with_fields:
        lead_values = _lead_fields(req, ctx.fields())
        if lead_values:
            item["custom_fields_values"] = lead_values
        contact = {"id": int(contact_id)} if contact_id else _contact_item(req, ctx)
    else:
        contact = {"id": int(contact_id)} if contact_id else _plain_contact(req, ctx)
    if not contact_id:
        contact.update(created_at=stamp, updated_at=stamp)
    item["_embedded"] = {"contacts": [contact]}
    return item


def _plain_contact(req: InboundRequest, ctx: _Context) -> dict[str, Any]:
    """The contact without our custom fields (after amoCRM refused one of their ids)."""
    item = _contact_item(req, ctx)
    kept = [
        f for f in item.get("custom_fields_values", []) if f.get("field_code") in ("PHONE", "EMAIL")
    ]
    if kept:
        item["custom_fields_values"] = kept
    else:
        item.pop("custom_fields_values", None)
    return item


def _create_deal(
    req: InboundRequest,
    person: InboundPerson,
    ctx: _Context,
    contact_id: int | None,
    outcome: str,
) -> None:
    """One ``POST /api/v4/leads/complex``: a deal with a new (embedded) or existing contact."""
    with _amo(req.owner_id, req.attempts, "leads/complex"):
        item = _lead_item(req, person, ctx, contact_id, with_fields=True)
    result: list[dict[str, Any]] = []
    for with_fields in (True, False):
        if not with_fields:
            item = _lead_item(req, person, ctx, contact_id, with_fields=False)
        # Committed before the call: if the answer is lost, the next attempt searches first.
        person.create_started_at = _now()
        db.session.commit()
        try:
            with _amo(req.owner_id, req.attempts, "leads/complex"):
                result = ctx.client().create_lead_complex([item])
            break
        except _Retry as exc:
            if isinstance(exc.__cause__, _REFUSED):
                # 429/403/402 are refused before anything is stored, and without a rate-limit
                # slot (Redis down) nothing was sent: nothing to look for. Any
                # other failure (timeout, 5xx, garbled answer) may have created the deal.
                person.create_started_at = None
                db.session.commit()
            raise
        except _Fail as exc:
            person.create_started_at = None
            db.session.commit()
            cause = exc.__cause__
            if (
                with_fields
                and isinstance(cause, AmoCRMValidationError)
                and _about_custom_fields(cause)
            ):
                # A cached field id is stale (field deleted or retyped): drop it, send plainly.
                logger.warning("amoCRM refused inbound custom fields of owner %s", req.owner_id)
                forget_field_map(req.owner_id)
                continue
            raise
    row = next((r for r in result if isinstance(r.get("id"), int)), None)
    if row is None:
        # Accepted without ids: treat like a lost answer, so the next attempt searches first.
        raise _Retry(
            "amoCRM accepted the deal but returned no id; checking", _backoff(req.attempts)
        )
    lead_id = int(row["id"])
    new_contact = row.get("contact_id")
    final_contact = int(new_contact) if isinstance(new_contact, int) else contact_id
    written = [("leads", lead_id, int(item["updated_at"]))]
    if contact_id is None and final_contact and not row.get("merged"):
        written.append(("contacts", final_contact, int(item["updated_at"])))
    remember_own_writes(req.owner_id, written)
    person.contact_id, person.lead_id = final_contact, lead_id
    person.create_started_at = None
    req.contact_id, req.lead_id, req.outcome = final_contact, lead_id, outcome
    db.session.commit()  # the ids are safe before anything else can fail
    _log(req, "success", {"merged": bool(row.get("merged"))})
    try:
        _mirror_created(req, ctx.cfg, final_contact, lead_id, item, new_contact=contact_id is None)
        db.session.commit()
    except Exception:  # the mirror is a cache; the next sync fills it anyway
        db.session.rollback()
        logger.warning("could not mirror inbound contact/deal of request %s", req.id, exc_info=True)


# Answers (or a missing rate-limit slot) that mean nothing reached amoCRM's storage.
_REFUSED = (AmoCRMRateLimited, AmoCRMBlocked, AmoCRMPaymentRequired, ThrottleUnavailable)


def _about_custom_fields(exc: AmoCRMValidationError) -> bool:
    for item in exc.errors:
        for err in item.get("errors") or ():
            if "custom_fields_values" in str(err.get("path", "")):
                return True
    return False


def _mirror_created(
    req: InboundRequest,
    cfg: AmoConfig,
    contact_id: int | None,
    lead_id: int,
    item: dict[str, Any],
    *,
    new_contact: bool,
) -> None:
    """Put what we just created into the local mirror, so the next dedup lookup sees it.

    The webhook echo of this write is not re-read (see crm_app.services.echo), so the rows carry
    everything we sent, stamped with the version we gave amoCRM; the sync replaces them with
    amoCRM's full data later. Inserting never overwrites a row.
    """
    now = int(item["updated_at"])
    pipeline_id, status_id = _lead_stage(req.owner_id, cfg)
    payload = req.payload
    rows: list[tuple[type, dict[str, Any]]] = []
    if new_contact and contact_id:
        phone = normalize_phone(payload.get("phone"))
        email = normalize_email(payload.get("email"))
        rows.append(
            (
                Contact,
                {
                    "owner_id": req.owner_id,
                    "id": contact_id,
                    "name": _display_name(payload, req.external_id)[:255],
                    "first_name": payload.get("first_name"),
                    "last_name": payload.get("last_name"),
                    "phone": phone,
                    "email": email,
                    "phones": [phone] if phone else [],
                    "emails": [email] if email else [],
                    "telegram_id": req.external_id if req.channel == "telegram" else None,
                    "responsible_user_id": cfg.lead_responsible_user_id,
                    "created_at": now,
                    "updated_at": now,
                    "raw": {"id": contact_id, "source": "inbound"},
                    "synced_at": _now(),
                },
            )
        )
    rows.append(
        (
            Lead,
            {
                "owner_id": req.owner_id,
                "id": lead_id,
                "name": str(item.get("name") or "")[:255] or None,
                "price": 0,
                "pipeline_id": pipeline_id,
                "status_id": status_id,
                "responsible_user_id": cfg.lead_responsible_user_id,
                "main_contact_id": contact_id,
                "contact_ids": [contact_id] if contact_id else [],
                "created_at": now,
                "updated_at": now,
                "raw": {"id": lead_id, "source": "inbound"},
                "synced_at": _now(),
            },
        )
    )
    for model, values in rows:
        if _is_postgres():
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        db.session.execute(insert(model).values(**values).on_conflict_do_nothing())


def _lead_stage(owner_id: int, cfg: AmoConfig) -> tuple[int | None, int | None]:
    """Pipeline and status a new deal lands in: the settings, else amoCRM's default (the main
    pipeline's first stage, as mirrored)."""
    from crm_app.models import Pipeline, PipelineStatus

    pipeline_id = cfg.lead_pipeline_id
    if pipeline_id is None:
        pipeline_id = db.session.scalar(
            select(Pipeline.id).where(Pipeline.owner_id == owner_id, Pipeline.is_main.is_(True))
        )
    status_id = cfg.lead_status_id
    if status_id is None and pipeline_id is not None:
        status_id = db.session.scalar(
            select(PipelineStatus.id)
            .where(
                PipelineStatus.owner_id == owner_id,
                PipelineStatus.pipeline_id == pipeline_id,
                PipelineStatus.type == 0,
            )
            .order_by(PipelineStatus.sort)
            .limit(1)
        )
    return pipeline_id, status_id


def _note_text(req: InboundRequest) -> str | None:
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
    return "\n".join(lines) if lines else None


def _note(req: InboundRequest, ctx: _Context, *, again: bool = True) -> None:
    text = _note_text(req)
    if text and req.lead_id:
        try:
            with _amo(req.owner_id, req.attempts, "note"):
                ctx.client().add_note("leads", int(req.lead_id), text[:20_000])
        except _Fail as exc:
            rejected = isinstance(exc.__cause__, AmoCRMValidationError | AmoCRMNotFound)
            known = req.outcome in (InboundOutcome.NOTE, InboundOutcome.EXISTING_DEAL)
            if not (again and rejected and known and _deal_gone(req, ctx)):
                raise
            # The deal was deleted in amoCRM: start a new one for the same contact.
            person = db.session.get(InboundPerson, req.person_id)
            if person is None:  # pragma: no cover
                raise
            _create_deal(req, person, ctx, req.contact_id, InboundOutcome.NEW_DEAL)
            _note(req, ctx, again=False)
            return
    req.note_added = True
    db.session.commit()


def _deal_gone(req: InboundRequest, ctx: _Context) -> bool:
    with _amo(req.owner_id, req.attempts, "deal check"):
        lead = ctx.client().get_lead(int(req.lead_id or 0), with_=None)
    return lead is None or bool(lead.get("is_deleted"))


# -- finishing ------------------------------------------------------------------------------------


def _log(req: InboundRequest, status: str, extra: dict[str, Any] | None = None) -> None:
    details: dict[str, Any] = {
        "request_id": req.public_id,
        "channel": req.channel,
        "outcome": req.outcome,
        "contact_id": req.contact_id,
        "lead_id": req.lead_id,
    }
    if req.error and status != "success":
        details["error"] = req.error
    details.update(extra or {})
    db.session.add(
        SyncLog(owner_id=req.owner_id, operation=LOG_OPERATION, status=status, details=details)
    )
    db.session.commit()


def _done(req: InboundRequest, began: datetime | None = None) -> Result:
    req.status = InboundStatus.CREATED
    req.error = None
    req.next_attempt_at = None
    req.processed_at = _now()
    db.session.commit()
    if began is not None:
        from crm_app.services.amo import record_api_success

        record_api_success(req.owner_id, began)
    logger.info(
        "inbound request %s: %s (contact %s, lead %s)",
        req.id,
        req.outcome,
        req.contact_id,
        req.lead_id,
    )
    return Result(InboundStatus.CREATED)


def _fail(req: InboundRequest, exc: _Fail) -> Result:
    req.status = InboundStatus.FAILED
    req.outcome = exc.outcome
    req.error = exc.message[:1000]
    req.next_attempt_at = None
    req.processed_at = _now()
    db.session.commit()
    logger.warning("inbound request %s failed: %s", req.id, exc.outcome)
    _log(req, "error")
    return Result(InboundStatus.FAILED)


def _retry_later(req: InboundRequest, exc: _Retry) -> Result:
    delay = exc.delay if exc.delay is not None else _backoff(req.attempts)
    req.error = exc.message[:1000]
    # The beat leaves it alone until the Celery retry had its chance.
    req.next_attempt_at = _now() + timedelta(seconds=delay + 60)
    db.session.commit()
    if exc.log and req.attempts <= 1:  # one log line per request, not one per retry
        _log(req, "error", {"retrying": True})
    logger.info("inbound request %s: retry in %.0f s (%s)", req.id, delay, exc.message)
    return Result(InboundStatus.QUEUED, retry_in=delay)


# -- beat and admin actions -------------------------------------------------------------------------


def requeue_stale(limit: int = 500, send: Callable[[int], bool] = enqueue) -> int:
    """Enqueue ``queued`` requests whose worker run was lost or whose retries ran out."""
    now = _now()
    fresh = now - timedelta(seconds=STALE_AFTER_SECONDS)
    rows = list(
        db.session.scalars(
            select(InboundRequest)
            .where(
                InboundRequest.status == InboundStatus.QUEUED,
                sa.or_(
                    InboundRequest.next_attempt_at <= now,
                    sa.and_(
                        InboundRequest.next_attempt_at.is_(None),
                        InboundRequest.created_at <= fresh,
                    ),
                ),
            )
            .order_by(InboundRequest.id)
            .limit(limit)
        )
    )
    for req in rows:
        # Pushed ahead first, so the next beat does not enqueue it again meanwhile.
        req.next_attempt_at = now + timedelta(seconds=300)
    db.session.commit()
    sent = sum(1 for req in rows if send(req.id))
    if rows:
        logger.info("re-enqueued %d of %d stale inbound requests", sent, len(rows))
    return sent


def retry_request(req: InboundRequest) -> bool:
    """Put a failed request back in the queue (after the admin fixed the cause)."""
    if req.status != InboundStatus.FAILED:
        return False
    req.status = InboundStatus.QUEUED
    if req.lead_id is None:  # otherwise keep it: the note text depends on it
        req.outcome = None
    req.error = None
    req.attempts = 0
    req.next_attempt_at = None
    req.processed_at = None
    db.session.commit()
    enqueue(req.id)
    return True
