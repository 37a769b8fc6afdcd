"""Processing inbound requests in batches: contacts and deals in amoCRM, exactly once.

The worker takes an owner's due requests together: whatever arrived within a short window
(``INBOUND_BATCH_WINDOW_MS``, default 250 ms) or 50 of them, whichever comes first (see
``batch``). Inside a batch:

* requests of one human (same person, Telegram id, phone or e-mail) form one *unit*
  (``groups``): one contact and one deal however many messages or channels it has;
* a unit whose person already has a deal gets its messages as notes (or, when that deal is closed
  and the owner wants it, a new deal for the same contact);
* a unit whose earlier ``leads/complex`` got no answer is looked up by its ``ref`` first (one
  read of the newest deals covers a whole batch);
* a unit matching an existing contact (the mirror; the API only while it was never synced) gets
  the contact's open deal, or a new deal attached to it;
* every other unit is a new contact + deal: all of them in one ``leads/complex`` call per 50,
  matched back by ``request_id``; then every message's note in one notes call per 50.

A 400 naming one item fails that item only (its reason shown on the request) and the rest are
sent again at once. A copy of a message already handled is marked ``duplicate`` and costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
from crm_app.amocrm.fields import field_value, get_emails, normalize_email, normalize_phone
from crm_app.extensions import db
from crm_app.i18n import mark as _n
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
from crm_app.models.chats import ChatMode
from crm_app.models.inbound import InboundOutcome
from crm_app.services.chats.channel import mode_for
from crm_app.services.echo import remember_own_writes
from crm_app.services.inbound import items as build
from crm_app.services.inbound.fields import forget_field_map, get_field_map
from crm_app.services.inbound.groups import Unit, group
from crm_app.services.inbound.intake import enqueue

logger = logging.getLogger(__name__)

CLOSED_STATUSES = (142, 143)
CHANNEL_LABELS = build.CHANNEL_LABELS
LOG_OPERATION = "create_lead"
BATCH_SIZE = 50  # leads/complex takes at most 50 deals; notes go in the same chunks
# The newest deals read to find unanswered creates: one page covers a batch of 50 easily.
RECOVERY_PAGE = 250

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
    "INBOUND_BATCH_WINDOW_MS": 250,
    "INBOUND_BATCH_SIZE": BATCH_SIZE,
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
    """What processing left a request with; ``retry_in`` is set when it should run again."""

    status: str
    retry_in: float | None = None


class _Retry(Exception):
    """Try again later (amoCRM down, rate limited, blocked; an answer still outstanding)."""

    def __init__(self, message: str, delay: float | None = None, *, log: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay
        self.log = log


class _Fail(Exception):
    """Give up on these requests (no connection, Auto Create Lead off, data refused)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


class _Context:
    """One batch's view of the owner: config, a lazily built client, the field map."""

    def __init__(self, owner_id: int, cfg: AmoConfig) -> None:
        self.owner_id = owner_id
        self.cfg = cfg
        self.attempts = 1
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

    def forget_fields(self) -> None:
        forget_field_map(self.owner_id)
        self._fields = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- amoCRM errors → retry or fail --------------------------------------------------------------


def _backoff(attempts: int) -> float:
    base = setting("INBOUND_RETRY_BASE_SECONDS")
    return float(min(setting("INBOUND_RETRY_MAX_SECONDS"), base * 2 ** max(0, attempts - 1)))


@contextlib.contextmanager
def _amo(owner_id: int, attempts: int, what: str) -> Iterator[None]:
    """Translate client errors: transient ones retry with backoff, the rest fail the requests."""
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


# 429/403/402 are refused before amoCRM stores anything, and without a rate-limit slot (Redis
# down) nothing was sent: a create that got one of these did not happen.
_REFUSED = (AmoCRMRateLimited, AmoCRMBlocked, AmoCRMPaymentRequired, ThrottleUnavailable)


# -- one batch ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Plan:
    """What one unit needs, and what it got."""

    unit: Unit
    person: InboundPerson  # the anchor: its ref names the deal
    people: list[InboundPerson]
    contact_id: int | None = None
    lead_id: int | None = None
    outcome: str | None = None
    plain: bool = False  # send without our custom fields (amoCRM refused one of their ids)
    merged: bool = False
    started_at: datetime | None = None


@dataclass
class _Batch:
    ctx: _Context
    requests: list[InboundRequest]
    open: dict[int, InboundRequest] = field(default_factory=dict)
    logs: list[SyncLog] = field(default_factory=list)
    # The note of a request whose deal turned out deleted waits for a new deal (next round).
    again: list[int] = field(default_factory=list)
    ready: dict[str, bool] = field(default_factory=dict)

    def mirror_ready(self, entity: str) -> bool:
        """Whether the mirror of `entity` is trusted (asked once per batch)."""
        if entity not in self.ready:
            self.ready[entity] = _mirror_ready(self.owner_id, entity)
        return self.ready[entity]

    @property
    def owner_id(self) -> int:
        return self.ctx.owner_id

    # -- terminal states (no commit here; the phases commit) -------------------------------------

    def done(self, req: InboundRequest) -> None:
        req.status = InboundStatus.CREATED
        req.error = None
        req.next_attempt_at = None
        req.processed_at = _now()
        self.open.pop(req.id, None)

    def fail(self, req: InboundRequest, exc: _Fail) -> None:
        req.status = InboundStatus.FAILED
        req.outcome = exc.outcome
        req.error = exc.message[:1000]
        req.next_attempt_at = None
        req.processed_at = _now()
        self.open.pop(req.id, None)
        self.log(req, "error")
        logger.warning("inbound request %s failed: %s", req.id, exc.outcome)

    def retry(self, req: InboundRequest, exc: _Retry) -> None:
        delay = exc.delay if exc.delay is not None else _backoff(req.attempts)
        req.error = exc.message[:1000]
        req.next_attempt_at = _now() + timedelta(seconds=delay)
        self.open.pop(req.id, None)
        if exc.log and req.attempts <= 1:  # one log line per request, not one per retry
            self.log(req, "error", {"retrying": True})

    def log(self, req: InboundRequest, status: str, extra: dict[str, Any] | None = None) -> None:
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
        self.logs.append(
            SyncLog(owner_id=req.owner_id, operation=LOG_OPERATION, status=status, details=details)
        )

    def commit(self) -> None:
        if self.logs:
            db.session.add_all(self.logs)
            self.logs = []
        db.session.commit()

    def unit_open(self, plan: _Plan) -> list[InboundRequest]:
        return [r for r in plan.unit.requests if r.id in self.open]

    def fail_unit(self, plan: _Plan, exc: _Fail) -> None:
        for req in self.unit_open(plan):
            self.fail(req, exc)

    def retry_unit(self, plan: _Plan, exc: _Retry) -> None:
        for req in self.unit_open(plan):
            self.retry(req, exc)


def process_batch(owner_id: int, requests: Sequence[InboundRequest]) -> list[int]:
    """Process claimed requests of one owner; returns ids to run again at once (a deal gone)."""
    from crm_app.services.amo import get_config

    batch_requests = [r for r in requests if r.status == InboundStatus.QUEUED]
    cfg = get_config(owner_id)
    if cfg is None or not cfg.auto_create_lead:
        off = _Fail(
            InboundOutcome.DISABLED,
            _n("Автосоздание сделок выключено: заявка сохранена, но в amoCRM не отправлена"),
        )
        closing = _Batch(_Context(owner_id, cfg or AmoConfig(owner_id=owner_id)), batch_requests)
        for req in batch_requests:
            closing.fail(req, off)
        closing.commit()
        return []
    ctx = _Context(owner_id, cfg)
    ctx.attempts = max([r.attempts or 1 for r in batch_requests] or [1])
    batch = _Batch(ctx, batch_requests, open={r.id: r for r in batch_requests})
    # The runner holds the owner's lock and writes these rows itself: reloading every request
    # and person after each of a batch's commits would cost hundreds of queries per batch.
    session = db.session()
    expire, session.expire_on_commit = session.expire_on_commit, False
    began = _now()
    try:
        _run(batch)
    except _Fail as exc:
        db.session.rollback()
        for req in list(batch.open.values()):
            batch.fail(req, exc)
    except _Retry as exc:
        db.session.rollback()
        for req in list(batch.open.values()):
            batch.retry(req, exc)
    except Exception:
        db.session.rollback()
        logger.exception("inbound batch of owner %s failed unexpectedly", owner_id)
        for req in list(batch.open.values()):
            batch.retry(req, _Retry("internal error; it has been logged"))
    finally:
        ctx.close()
        session.expire_on_commit = expire
    batch.commit()
    if any(r.status == InboundStatus.CREATED for r in batch_requests):
        from crm_app.services.amo import record_api_success

        record_api_success(owner_id, began)  # clears a badge error older than this batch
    return batch.again


def _run(batch: _Batch) -> None:
    fresh: list[InboundRequest] = []
    handled = _handled_copies(batch.requests)
    for req in batch.requests:
        if req.lead_id is not None:
            continue  # an earlier attempt got the deal; only the note is left
        if _take_duplicate(req, handled):
            continue
        fresh.append(req)
    batch.commit()
    plans = _plan_units(batch, group(fresh))
    batch.commit()
    size = max(1, min(BATCH_SIZE, setting("INBOUND_BATCH_SIZE")))
    for start in range(0, len(plans), size):
        _create_chunk(batch, plans[start : start + size])
    notes = [r for r in batch.open.values() if r.lead_id is not None and not r.note_added]
    notes.sort(key=lambda r: r.id)
    if notes and mode_for(batch.owner_id) == ChatMode.CHAT:
        # The owner reads the conversation in amoCRM's chat: no copy of it as notes.
        for req in notes:
            req.note_added = True
        notes = []
    for start in range(0, len(notes), size):
        _notes_chunk(batch, notes[start : start + size])
    for req in list(batch.open.values()):
        if req.lead_id is not None and req.note_added:
            batch.done(req)
            logger.info(
                "inbound request %s: %s (contact %s, lead %s)",
                req.id,
                req.outcome,
                req.contact_id,
                req.lead_id,
            )
    batch.commit()


def _handled_copies(requests: Sequence[InboundRequest]) -> list[InboundRequest]:
    """Earlier requests with a deal that share a person and content with any of `requests`
    (one query for the batch)."""
    keys = {(r.person_id, r.fingerprint) for r in requests if r.lead_id is None}
    if not keys:
        return []
    window = timedelta(seconds=setting("INBOUND_DUPLICATE_WINDOW_SECONDS"))
    oldest = min(r.created_at for r in requests) - window
    return list(
        db.session.scalars(
            select(InboundRequest)
            .where(
                sa.tuple_(InboundRequest.person_id, InboundRequest.fingerprint).in_(sorted(keys)),
                InboundRequest.status != InboundStatus.FAILED,
                InboundRequest.lead_id.is_not(None),
                InboundRequest.created_at >= oldest,
            )
            .order_by(InboundRequest.id)
        )
    )


def _take_duplicate(req: InboundRequest, handled: Sequence[InboundRequest]) -> bool:
    """True (and the request filled in) when this very message was already handled."""
    window = timedelta(seconds=setting("INBOUND_DUPLICATE_WINDOW_SECONDS"))
    other = next(
        (
            o
            for o in handled
            if o.person_id == req.person_id
            and o.fingerprint == req.fingerprint
            and o.id != req.id
            and abs(o.created_at - req.created_at) <= window
        ),
        None,
    )
    if other is None:
        return False
    req.contact_id, req.lead_id = other.contact_id, other.lead_id
    req.outcome = InboundOutcome.DUPLICATE
    req.note_added = True  # the original carries the note
    return True


def _assign(
    batch: _Batch,
    plan: _Plan,
    contact_id: int | None,
    lead_id: int,
    outcome: str,
    *,
    created: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Give every person and request of the unit its contact and deal."""
    plan.contact_id, plan.lead_id, plan.outcome = contact_id, lead_id, outcome
    for person in plan.people:
        person.contact_id, person.lead_id = contact_id, lead_id
        person.create_started_at = None
    seen: set[tuple[int | None, str]] = set()
    for index, req in enumerate(plan.unit.requests):
        req.contact_id, req.lead_id = contact_id, lead_id
        key = (req.person_id, req.fingerprint)
        if key in seen:
            # The same message twice in one window (a retry, a double click): one note.
            req.outcome = InboundOutcome.DUPLICATE
            req.note_added = True
            continue
        seen.add(key)
        req.outcome = outcome if index == 0 else InboundOutcome.NOTE
    if created:
        batch.log(plan.unit.first, "success", {"merged": plan.merged, **(extra or {})})


# -- deciding what each unit needs ---------------------------------------------------------------


def _plan_units(batch: _Batch, units: list[Unit]) -> list[_Plan]:
    """Resolve what can be resolved locally; return the units that need a ``leads/complex``."""
    ctx = batch.ctx
    ids = {pid for unit in units for pid in unit.person_ids}
    people = {
        p.id: p for p in db.session.scalars(select(InboundPerson).where(InboundPerson.id.in_(ids)))
    }
    plans = [
        _Plan(unit, people[unit.first.person_id or 0], [people[i] for i in unit.person_ids])
        for unit in units
    ]
    matches = _mirror_matches(batch.owner_id, units)
    creates: list[_Plan] = []
    recover: list[_Plan] = []
    for plan in plans:
        try:
            known = next((p for p in plan.people if p.lead_id is not None), None)
            if known is not None and known.lead_id is not None:
                if ctx.cfg.new_deal_when_closed and _deal_closed(batch.owner_id, known.lead_id):
                    plan.contact_id, plan.outcome = known.contact_id, InboundOutcome.NEW_DEAL
                    creates.append(plan)
                else:
                    _assign(batch, plan, known.contact_id, known.lead_id, InboundOutcome.NOTE)
                continue
            started = [p.create_started_at for p in plan.people if p.create_started_at]
            if started:
                plan.started_at = min(started)
                recover.append(plan)
                continue
            contact_id = next((p.contact_id for p in plan.people if p.contact_id), None)
            if contact_id is None:
                contact_id = _match_contact(batch, plan, matches)
            if contact_id is None:
                plan.outcome = InboundOutcome.NEW
                creates.append(plan)
                continue
            lead_id = _open_deal_of(batch, contact_id)
            if lead_id is not None:
                _assign(batch, plan, contact_id, lead_id, InboundOutcome.EXISTING_DEAL)
            else:
                plan.contact_id, plan.outcome = contact_id, InboundOutcome.NEW_DEAL
                creates.append(plan)
        except _Retry as exc:
            batch.retry_unit(plan, exc)
        except _Fail as exc:
            batch.fail_unit(plan, exc)
    if recover:
        creates.extend(_recover(batch, recover))
    return creates


def _mirror_ready(owner_id: int, entity: str) -> bool:
    """True once a sync of ``entity`` has succeeded: from then on the mirror is trusted."""
    cursor = db.session.get(SyncCursor, (owner_id, entity))
    return cursor is not None and cursor.last_success_at is not None


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def _mirror_matches(owner_id: int, units: list[Unit]) -> dict[tuple[str, str], int]:
    """Identity → the lowest mirrored contact id carrying it, for a whole batch in three queries."""
    wanted: dict[str, set[str]] = {"telegram": set(), "phone": set(), "email": set()}
    for unit in units:
        for kind, value in unit.identities():
            wanted[kind].add(value)
    found: dict[tuple[str, str], int] = {}

    def keep(kind: str, value: str | None, contact_id: int) -> None:
        if value and value in wanted[kind]:
            key = (kind, value)
            found[key] = min(found.get(key, contact_id), contact_id)

    base = select(
        Contact.id,
        Contact.telegram_id,
        Contact.phone,
        Contact.email,
        Contact.phones,
        Contact.emails,
    ).where(Contact.owner_id == owner_id)
    conditions = []
    if wanted["telegram"]:
        conditions.append(Contact.telegram_id.in_(sorted(wanted["telegram"])))
    if wanted["phone"]:
        phones = sorted(wanted["phone"])
        conditions.append(Contact.phone.in_(phones))
        if _is_postgres():
            conditions.append(_jsonb(Contact.phones).has_any(sa.cast(phones, _text_array())))
    if wanted["email"]:
        emails = sorted(wanted["email"])
        conditions.append(sa.func.lower(Contact.email).in_(emails))
        if _is_postgres():
            conditions.append(_jsonb(Contact.emails).has_any(sa.cast(emails, _text_array())))
    if not conditions:
        return found
    for row in db.session.execute(base.where(sa.or_(*conditions))):
        keep("telegram", row.telegram_id, row.id)
        for phone in {row.phone, *(row.phones or ())}:
            keep("phone", phone, row.id)
        for email in {row.email, *(row.emails or ())}:
            keep("email", (email or "").lower() or None, row.id)
    return found


def _jsonb(column: Any) -> Any:
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.type_coerce(column, JSONB)


def _text_array() -> Any:
    from sqlalchemy.dialects.postgresql import ARRAY

    return ARRAY(sa.Text())


def _match_contact(batch: _Batch, plan: _Plan, matches: dict[tuple[str, str], int]) -> int | None:
    """An existing amoCRM contact of this unit: Telegram ID, then phone, then e-mail."""
    identities = plan.unit.identities()
    for key in identities:
        if key in matches:
            return matches[key]
    if not identities or batch.mirror_ready("contacts"):
        return None
    # Never synced: the mirror proves nothing, so ask amoCRM (each hit verified field by field).
    with _amo(batch.owner_id, batch.ctx.attempts, "contact search"):
        for kind, value in identities:
            contact_id = _api_contact(batch.ctx, kind, value)
            if contact_id is not None:
                return contact_id
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
    return int(ids[0]) if ids else None


def _deal_closed(owner_id: int, lead_id: int) -> bool:
    status = db.session.scalar(
        select(Lead.status_id).where(Lead.owner_id == owner_id, Lead.id == lead_id)
    )
    return status in CLOSED_STATUSES


def _open_deal_of(batch: _Batch, contact_id: int) -> int | None:
    """The newest open deal of a contact: the mirror, or amoCRM while leads were never synced."""
    owner_id = batch.owner_id
    linked = Lead.main_contact_id == contact_id
    if _is_postgres():
        linked = sa.or_(linked, _jsonb(Lead.contact_ids).contains([contact_id]))
    rows = db.session.execute(
        select(Lead.id, Lead.status_id)
        .where(Lead.owner_id == owner_id, linked)
        .order_by(Lead.id.desc())
    ).all()
    open_ids = [int(r.id) for r in rows if r.status_id not in CLOSED_STATUSES]
    if open_ids:
        return open_ids[0]
    if rows or batch.mirror_ready("leads"):
        return None
    with _amo(owner_id, batch.ctx.attempts, "deal lookup"):
        client = batch.ctx.client()
        contact = client.get_contact(contact_id, with_="leads") or {}
        embedded = contact.get("_embedded") or {}
        lead_ids = sorted(
            (int(i["id"]) for i in embedded.get("leads") or () if isinstance(i.get("id"), int)),
            reverse=True,
        )
        for lead_id in lead_ids[:3]:  # ids grow with time: the newest deals first
            lead = client.get_lead(lead_id, with_=None)
            if lead and lead.get("status_id") not in CLOSED_STATUSES and not lead.get("is_deleted"):
                return lead_id
    return None


# -- unanswered creates ---------------------------------------------------------------------------


def _refs_in(name: Any) -> set[str]:
    text = str(name or "")
    return {part.split("]", 1)[0] for part in text.split("[")[1:] if "]" in part}


def _lead_hit(lead: dict[str, Any]) -> tuple[int, int | None]:
    contacts = (lead.get("_embedded") or {}).get("contacts") or []
    main = [c for c in contacts if c.get("is_main")] or contacts
    contact_id = main[0].get("id") if main else None
    return int(lead["id"]), int(contact_id) if isinstance(contact_id, int) else None


def _recover(batch: _Batch, plans: list[_Plan]) -> list[_Plan]:
    """Find the deals of creates whose answer was lost; return the units to create again.

    One read of the newest deals (ids grow with time) finds them all, as long as the page reaches
    back past the oldest unanswered call; any ref it cannot vouch for is searched by itself.
    """
    ctx = batch.ctx
    wanted = {plan.person.ref: plan for plan in plans}
    found: dict[str, tuple[int, int | None]] = {}
    try:
        with _amo(batch.owner_id, ctx.attempts, "deal search"):
            client = ctx.client()
            page = client.get_leads(limit=RECOVERY_PAGE, order={"id": "desc"}, with_="contacts")
            oldest = min((int(lead.get("created_at") or 0) for lead in page.items), default=0)
            for lead in page.items:
                for ref in _refs_in(lead.get("name")) & set(wanted):
                    found.setdefault(ref, _lead_hit(lead))
            complete = len(page.items) < RECOVERY_PAGE
            for ref, plan in wanted.items():
                started = int((plan.started_at or _now()).timestamp())
                if ref in found or complete or oldest < started - 5:
                    continue  # the page covers the time of that call
                hits = client.get_leads(query=ref, limit=50, with_="contacts")
                for lead in hits.items:
                    if ref in _refs_in(lead.get("name")):
                        found[ref] = _lead_hit(lead)
                        break
    except _Retry as exc:
        for plan in plans:
            batch.retry_unit(plan, exc)
        return []
    except _Fail as exc:
        for plan in plans:
            batch.fail_unit(plan, exc)
        return []
    grace = timedelta(seconds=setting("INBOUND_CREATE_GRACE_SECONDS"))
    again: list[_Plan] = []
    for ref, plan in wanted.items():
        known_contact = next((p.contact_id for p in plan.people if p.contact_id), None)
        outcome = InboundOutcome.NEW_DEAL if known_contact else InboundOutcome.NEW
        if ref in found:
            lead_id, contact_id = found[ref]
            logger.info("inbound %s: unanswered create did happen (lead %s)", ref, lead_id)
            _assign(
                batch,
                plan,
                contact_id or known_contact,
                lead_id,
                outcome,
                created=True,
                extra={"recovered": True},
            )
        elif plan.started_at is not None and _now() - plan.started_at < grace:
            batch.retry_unit(
                plan, _Retry("an earlier create is not answered yet; checking again soon", 15.0)
            )
        else:
            for person in plan.people:
                person.create_started_at = None
            plan.contact_id, plan.outcome = known_contact, outcome
            again.append(plan)
    return again


# -- creating -------------------------------------------------------------------------------------


def _errors_by_item(
    exc: AmoCRMValidationError, keys: Sequence[str]
) -> dict[int, list[dict[str, Any]]]:
    """``validation-errors`` → {position in our array: errors}; amoCRM names an item by the
    ``request_id`` we sent, or by its index when we sent none."""
    out: dict[int, list[dict[str, Any]]] = {}
    position = {key: index for index, key in enumerate(keys)}
    for entry in exc.errors:
        rid = str(entry.get("request_id", ""))
        index = position.get(rid)
        if index is None and rid.isdigit() and int(rid) < len(keys):
            index = int(rid)
        if index is not None:
            out.setdefault(index, []).extend(e for e in entry.get("errors") or () if e)
    return out


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = [f"{e.get('path') or '-'}: {e.get('detail') or e.get('code') or '?'}" for e in errors]
    return "; ".join(parts)[:500] or "validation failed"


def _about_custom_fields(errors: list[dict[str, Any]]) -> bool:
    return any("custom_fields_values" in str(e.get("path", "")) for e in errors)


def _create_chunk(batch: _Batch, plans: list[_Plan]) -> None:
    """One ``leads/complex`` for up to 50 units; a refused item is dropped and the rest resent."""
    ctx = batch.ctx
    pending = [p for p in plans if batch.unit_open(p)]
    for _round in range(len(pending) + 2):
        if not pending:
            return
        stamp = int(_now().timestamp())
        try:
            with _amo(batch.owner_id, ctx.attempts, "leads/complex"):
                fields = ctx.fields()
        except _Retry as exc:
            for plan in pending:
                batch.retry_unit(plan, exc)
            batch.commit()
            return
        except _Fail as exc:
            for plan in pending:
                batch.fail_unit(plan, exc)
            batch.commit()
            return
        body = [
            build.lead_item(
                p.unit.requests, p.person.ref, ctx.cfg, fields, p.contact_id, stamp, plain=p.plain
            )
            for p in pending
        ]
        # Committed before the call: if the answer is lost, the next attempt searches first.
        now = _now()
        for plan in pending:
            plan.person.create_started_at = now
        batch.commit()
        try:
            with _amo(batch.owner_id, ctx.attempts, "leads/complex"):
                result = ctx.client().create_lead_complex(body)
        except _Retry as exc:
            refused = isinstance(exc.__cause__, _REFUSED)
            for plan in pending:
                if refused:  # nothing was stored: the retry goes straight to the create
                    plan.person.create_started_at = None
                batch.retry_unit(plan, exc)
            batch.commit()
            return
        except _Fail as exc:
            for plan in pending:
                plan.person.create_started_at = None  # a 4xx stored nothing (all or nothing)
            cause = exc.__cause__
            named = (
                _errors_by_item(cause, [p.person.ref for p in pending])
                if isinstance(cause, AmoCRMValidationError)
                else {}
            )
            if not named:
                for plan in pending:
                    batch.fail_unit(plan, exc)
                batch.commit()
                return
            refused_field = False
            for index, errors in sorted(named.items()):
                plan = pending[index]
                if not plan.plain and _about_custom_fields(errors):
                    plan.plain = True  # a cached field id is stale: send this one plainly
                    refused_field = True
                    continue
                batch.fail_unit(
                    plan,
                    _Fail(InboundOutcome.REJECTED, f"amoCRM refused the deal: {_describe(errors)}"),
                )
            if refused_field:
                logger.warning("amoCRM refused inbound custom fields of owner %s", batch.owner_id)
                ctx.forget_fields()
            pending = [p for p in pending if batch.unit_open(p)]
            batch.commit()
            continue
        _apply_created(batch, pending, body, result, stamp)
        return


def _apply_created(
    batch: _Batch,
    plans: list[_Plan],
    body: list[dict[str, Any]],
    result: list[dict[str, Any]],
    stamp: int,
) -> None:
    """Match amoCRM's answer to the units by ``request_id`` and store the ids before anything else.

    An entry merged by amoCRM's duplicate control may name several of our ``request_id``s: they
    all get that contact and deal.
    """
    by_ref = {p.person.ref: p for p in plans}
    matched: dict[int, _Plan] = {}
    written: list[tuple[str, int, int]] = []
    for position, entry in enumerate(result):
        lead_id = entry.get("id")
        if not isinstance(lead_id, int):
            continue
        rids = entry.get("request_id")
        refs = [str(r) for r in rids] if isinstance(rids, list) else [str(rids or position)]
        contact = entry.get("contact_id")
        merged = bool(entry.get("merged")) or len(refs) > 1
        for ref in refs:
            plan = by_ref.get(ref)
            if plan is None and ref.isdigit() and int(ref) < len(plans):
                plan = plans[int(ref)]
            if plan is None or id(plan) in matched:
                continue
            plan.merged = merged
            contact_id = int(contact) if isinstance(contact, int) else plan.contact_id
            _assign(
                batch, plan, contact_id, lead_id, plan.outcome or InboundOutcome.NEW, created=True
            )
            matched[id(plan)] = plan
        written.append(("leads", lead_id, stamp))
        if isinstance(contact, int) and not merged:
            written.append(("contacts", contact, stamp))
    for plan in plans:
        if id(plan) not in matched:
            # Its create_started_at stays set: the next attempt looks the deal up by its ref.
            batch.retry_unit(plan, _Retry("amoCRM's answer did not name this deal; checking", 5.0))
    batch.commit()  # the ids are safe before anything else can fail
    remember_own_writes(batch.owner_id, written)
    items = {p.person.ref: item for p, item in zip(plans, body, strict=True)}
    try:
        _mirror_created(batch, list(matched.values()), items)
        db.session.commit()
    except Exception:  # the mirror is a cache; the next sync fills it anyway
        db.session.rollback()
        logger.warning("could not mirror inbound deals of owner %s", batch.owner_id, exc_info=True)


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


def _mirror_created(batch: _Batch, plans: list[_Plan], items: dict[str, dict[str, Any]]) -> None:
    """Put what we just created into the local mirror, so the next dedup lookup sees it.

    The webhook echo of this write is not re-read (``crm_app.services.echo``), so the rows carry
    everything we sent, stamped with the version we gave amoCRM; the sync replaces them with
    amoCRM's full data later. Inserting never overwrites a row.
    """
    cfg = batch.ctx.cfg
    pipeline_id, status_id = _lead_stage(batch.owner_id, cfg)
    contacts: list[dict[str, Any]] = []
    leads: list[dict[str, Any]] = []
    synced = _now()
    for plan in plans:
        item = items[plan.person.ref]
        stamp = int(item["updated_at"])
        embedded = item["_embedded"]["contacts"][0]
        if "id" not in embedded and plan.contact_id and not plan.merged:
            reqs = plan.unit.requests
            phones = sorted({p for r in reqs if (p := normalize_phone(r.payload.get("phone")))})
            emails = sorted({e for r in reqs if (e := normalize_email(r.payload.get("email")))})
            telegram = next((r.external_id for r in reqs if r.channel == "telegram"), None)
            contacts.append(
                {
                    "owner_id": batch.owner_id,
                    "id": plan.contact_id,
                    "name": embedded.get("name"),
                    "first_name": embedded.get("first_name"),
                    "last_name": embedded.get("last_name"),
                    "phone": phones[0] if phones else None,
                    "email": emails[0] if emails else None,
                    "phones": phones,
                    "emails": emails,
                    "telegram_id": telegram,
                    "responsible_user_id": cfg.lead_responsible_user_id,
                    "created_at": stamp,
                    "updated_at": stamp,
                    "raw": {"id": plan.contact_id, "source": "inbound"},
                    "synced_at": synced,
                }
            )
        if plan.lead_id:
            leads.append(
                {
                    "owner_id": batch.owner_id,
                    "id": plan.lead_id,
                    "name": str(item.get("name") or "")[:255] or None,
                    "price": 0,
                    "pipeline_id": pipeline_id,
                    "status_id": status_id,
                    "responsible_user_id": cfg.lead_responsible_user_id,
                    "main_contact_id": plan.contact_id,
                    "contact_ids": [plan.contact_id] if plan.contact_id else [],
                    "created_at": stamp,
                    "updated_at": stamp,
                    "raw": {"id": plan.lead_id, "source": "inbound"},
                    "synced_at": synced,
                }
            )
    for model, rows in ((Contact, contacts), (Lead, leads)):
        if rows:
            db.session.execute(_insert_ignore(model), rows)


def _insert_ignore(model: Any) -> Any:
    if _is_postgres():
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(model).on_conflict_do_nothing()


# -- notes ----------------------------------------------------------------------------------------


def _notes_chunk(batch: _Batch, requests: list[InboundRequest]) -> None:
    """One notes call for up to 50 messages; a refused note is dropped and the rest resent."""
    ctx = batch.ctx
    pending: list[tuple[InboundRequest, str]] = []
    for req in requests:
        text = build.note_text(req)
        if text:
            pending.append((req, text))
        else:
            req.note_added = True
    for _round in range(len(pending) + 2):
        if not pending:
            return
        body = [
            {
                "entity_id": int(req.lead_id or 0),
                "note_type": "common",
                "params": {"text": text},
                "request_id": req.public_id,
            }
            for req, text in pending
        ]
        try:
            with _amo(batch.owner_id, ctx.attempts, "note"):
                ctx.client().add_notes("leads", body)
        except _Retry as exc:
            for req, _text in pending:
                batch.retry(req, exc)
            batch.commit()
            return
        except _Fail as exc:
            cause = exc.__cause__
            named = (
                _errors_by_item(cause, [req.public_id for req, _t in pending])
                if isinstance(cause, AmoCRMValidationError)
                else {}
            )
            if not named:
                for req, _text in pending:
                    batch.fail(req, exc)
                batch.commit()
                return
            for index, errors in sorted(named.items()):
                req = pending[index][0]
                gone = any(str(e.get("path", "")).startswith("entity_id") for e in errors)
                if gone and req.outcome in (InboundOutcome.NOTE, InboundOutcome.EXISTING_DEAL):
                    _deal_gone(batch, req)
                else:
                    batch.fail(
                        req,
                        _Fail(
                            InboundOutcome.REJECTED, f"amoCRM refused the note: {_describe(errors)}"
                        ),
                    )
            pending = [(r, t) for r, t in pending if r.id in batch.open and r.lead_id]
            batch.commit()
            continue
        for req, _text in pending:
            req.note_added = True
        batch.commit()
        return


def _deal_gone(batch: _Batch, req: InboundRequest) -> None:
    """The deal a note was for was deleted in amoCRM: the request starts over for a new deal."""
    lead_id = req.lead_id
    for person in db.session.scalars(
        select(InboundPerson).where(
            InboundPerson.owner_id == batch.owner_id, InboundPerson.lead_id == lead_id
        )
    ):
        person.lead_id = None
    db.session.execute(sa.delete(Lead).where(Lead.owner_id == batch.owner_id, Lead.id == lead_id))
    req.lead_id, req.outcome = None, None
    req.next_attempt_at = _now()
    batch.open.pop(req.id, None)
    batch.again.append(req.id)


# -- admin actions ----------------------------------------------------------------------------------


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
