"""Creating, updating and deleting leads, contacts, companies and tasks, with the webhooks each fires."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from crm_app.sandbox import fields as fx
from crm_app.sandbox.seed import leads_record_defaults
from crm_app.sandbox.store import LOST_STATUS, WON_STATUS, Account, Record
from crm_app.sandbox.webhooks import SINGULAR, Event

if TYPE_CHECKING:
    from crm_app.sandbox.state import Sandbox

ENTITY_TYPES = ("leads", "contacts", "companies", "customers")
T = TypeVar("T")
CLOSED = (WON_STATUS, LOST_STATUS)
# Fields whose change is an `update` on its own; status and responsible have their own actions.
QUIET_KEYS = {
    "updated_at",
    "updated_by",
    "status_id",
    "pipeline_id",
    "closed_at",
    "responsible_user_id",
}


class ValidationFailed(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("validation failed")
        self.errors = errors


def request_id(item: Any, index: int) -> str:
    if isinstance(item, dict) and item.get("request_id") not in (None, ""):
        return str(item["request_id"])
    return str(index)


def check_each(
    items: list[Any], check: Callable[[dict[str, Any], fx.Errors], T | None]
) -> list[tuple[T, str]]:
    """`check` every item (each must be an object) before anything changes.

    Returns (result, request_id) pairs; if any item has errors, raises ValidationFailed naming
    each failing request_id, as amoCRM refuses the whole batch.
    """
    built: list[tuple[T, str]] = []
    problems: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        rid = request_id(item, index)
        errs: fx.Errors = []
        result = check(item, errs) if isinstance(item, dict) else None
        if not isinstance(item, dict):
            fx.type_error(errs, "", "object")
        if errs:
            problems.append({"request_id": rid, "errors": errs})
        else:
            assert result is not None  # no errors: the item was an object and got checked
            built.append((result, rid))
    if problems:
        raise ValidationFailed(problems)
    return built


class Writer:
    """One write request against one account: validate everything, then commit and notify."""

    def __init__(self, sandbox: Sandbox, account: Account, user_id: int) -> None:
        self.sb = sandbox
        self.acc = account
        self.user_id = user_id
        self.now = sandbox.clock.now()
        self.events: list[Event] = []
        self.items = sandbox.items(account)

    # --- public operations ------------------------------------------------------------
    def create(self, kind: str, items: list[Any]) -> list[tuple[Record, str]]:
        with self.acc.lock:
            built = check_each(items, lambda item, errs: self.build(kind, item, None, errs))
            for record, _rid in built:
                self.insert(kind, record)
        self.flush()
        return built

    def update(self, kind: str, items: list[Any]) -> list[tuple[Record, str]]:
        table = self.acc.tables[kind]

        def check(item: dict[str, Any], errs: fx.Errors) -> tuple[Record, Record] | None:
            if not fx.is_int(item.get("id")):
                fx.err(errs, "NotBlank", "id", fx.NOT_BLANK)
                return None
            old = table.get(item["id"])
            if old is None:
                fx.err(errs, "NotFound", "id", "Entity not found")
                return None
            return old, self.build(kind, item, old, errs)

        with self.acc.lock:
            built = check_each(items, check)
            for (old, record), _rid in built:
                self.replace(kind, old, record)
        self.flush()
        return [(record, rid) for (_old, record), rid in built]

    def delete(self, kind: str, rid: int) -> Record | None:
        with self.acc.lock:
            record = self.acc.tables[kind].get(rid)
            if record is None:
                return None
            self.remove(kind, record)
        self.flush()
        return record

    # --- building records -------------------------------------------------------------
    def build(self, kind: str, item: dict[str, Any], old: Record | None, errs: fx.Errors) -> Record:
        builder = getattr(self, f"_build_{kind}")
        record: Record = builder(item, old, errs)
        return record

    def _common(
        self, entity: str, item: dict[str, Any], old: Record | None, errs: fx.Errors
    ) -> dict[str, Any]:
        """Fields shared by leads, contacts and companies."""
        out: dict[str, Any] = {}
        name = fx.get_str(item, "name", errs)
        if name is not None:
            out["name"] = name
        responsible = fx.get_user(self.acc, item, "responsible_user_id", errs)
        if responsible is not None:
            out["responsible_user_id"] = responsible
        for key in ("created_by", "updated_by"):
            value = fx.get_int(item, key, errs)
            if value is not None:
                out[key] = value
        for key in ("created_at", "updated_at"):
            value = fx.get_int(item, key, errs)
            if value is not None:
                out[key] = value
        if "custom_fields_values" in item:
            cf = fx.parse_custom_fields(
                self.acc, entity, item["custom_fields_values"], errs, old.get("cf") if old else None
            )
            out["cf"] = cf
        tags = fx.apply_tags(self.acc, entity, old.get("tags") if old else (), item, errs)
        out["tags"] = tags
        return out

    def _stamp(self, record: Record, old: Record | None, changes: dict[str, Any]) -> Record:
        if old is None:
            record.setdefault("created_by", self.user_id)
            record.setdefault("created_at", self.now)
            record.setdefault("responsible_user_id", self.user_id)
            record.setdefault("group_id", 0)
            record.setdefault("closest_task_at", None)
        record["updated_by"] = changes.get("updated_by", self.user_id)
        record["updated_at"] = changes.get("updated_at", self.now)
        return record

    def _company_ref(self, item: dict[str, Any], errs: fx.Errors) -> Any:
        embedded = item.get("_embedded")
        if not isinstance(embedded, dict) or "companies" not in embedded:
            return ...
        companies = embedded["companies"]
        if not companies:
            return None
        first = companies[0] if isinstance(companies, list) else None
        if not isinstance(first, dict) or not fx.is_int(first.get("id")):
            fx.err(errs, "NotBlank", "_embedded.companies.0.id", fx.NOT_BLANK)
            return ...
        if self.acc.tables["companies"].get(first["id"]) is None:
            fx.err(errs, "NotSupportedChoice", "_embedded.companies.0.id", fx.NOT_CHOICE)
            return ...
        return first["id"]

    def _build_contacts(self, item: dict[str, Any], old: Record | None, errs: fx.Errors) -> Record:
        changes = self._common("contacts", item, old, errs)
        for key in ("first_name", "last_name"):
            value = fx.get_str(item, key, errs)
            if value is not None:
                changes[key] = value
        company = self._company_ref(item, errs)
        if company is not ...:
            changes["company_id"] = company
        record = (
            dict(old)
            if old
            else {"first_name": "", "last_name": "", "cf": None, "company_id": None}
        )
        record.update(changes)
        if "name" not in changes and ("first_name" in changes or "last_name" in changes):
            record["name"] = f"{record['first_name']} {record['last_name']}".strip()
        record.setdefault("name", "")
        return self._stamp(record, old, changes)

    def _build_companies(self, item: dict[str, Any], old: Record | None, errs: fx.Errors) -> Record:
        changes = self._common("companies", item, old, errs)
        record = dict(old) if old else {"name": "", "cf": None}
        record.update(changes)
        return self._stamp(record, old, changes)

    def _build_leads(self, item: dict[str, Any], old: Record | None, errs: fx.Errors) -> Record:
        changes = self._common("leads", item, old, errs)
        price = fx.get_int(item, "price", errs)
        if price is not None:
            changes["price"] = price
        for key in ("closed_at", "loss_reason_id"):
            if key in item:
                value = fx.get_int(item, key, errs, nullable=True)
                changes[key] = value
        self._lead_status(item, old, changes, errs)
        reason = changes.get("loss_reason_id")
        if reason is not None:
            status = changes.get("status_id", old["status_id"] if old else None)
            only_lost = self.sb.config.loss_reason_only_lost
            if reason not in self.acc.loss_reasons or (only_lost and status != LOST_STATUS):
                fx.err(errs, "NotSupportedChoice", "loss_reason_id", fx.NOT_CHOICE)
        record = dict(old) if old else leads_record_defaults()
        record.update(changes)
        status = record.get("status_id")  # missing when the status failed validation
        if status in CLOSED and (old is None or old["status_id"] not in CLOSED):
            record["closed_at"] = changes.get("closed_at") or self.now
        elif status not in CLOSED and "closed_at" not in changes:
            record["closed_at"] = None
        embedded = item.get("_embedded")
        if isinstance(embedded, dict) and embedded.get("contacts"):
            record["contacts"] = self._lead_contacts(record.get("contacts") or (), embedded, errs)
        company = self._company_ref(item, errs)
        if company is not ...:
            record["company_id"] = company
        record.setdefault("name", "")  # nothing is required on create
        return self._stamp(record, old, changes)

    def _lead_status(
        self, item: dict[str, Any], old: Record | None, changes: dict[str, Any], errs: fx.Errors
    ) -> None:
        pipeline_given = "pipeline_id" in item
        pipeline = None
        if pipeline_given:
            pid = fx.get_int(item, "pipeline_id", errs)
            pipeline = self.acc.pipeline(pid) if pid is not None else None
            if pid is not None and pipeline is None:
                fx.err(errs, "NotSupportedChoice", "pipeline_id", fx.NOT_CHOICE)
                return
        elif old is not None:
            pipeline = self.acc.pipeline(old["pipeline_id"])
        current = pipeline.status(old["status_id"]) if old is not None and pipeline else None
        in_unsorted = current is not None and current.type == 1
        if "status_id" in item and item["status_id"] is None and old is not None:
            # `status_id: null` takes a lead out of "unsorted" to the first working stage.
            if in_unsorted and pipeline is not None:
                changes["status_id"], changes["pipeline_id"] = (
                    pipeline.first_status().id,
                    pipeline.id,
                )
            return
        if "status_id" in item:
            sid = fx.get_int(item, "status_id", errs)
            if sid is None:
                return
            target = (pipeline.status(sid) if pipeline else None) or next(
                (p.status(sid) for p in self.acc.pipelines if p.status(sid)), None
            )
            if old is not None and target is not None and target.type == 1:
                # The unsorted stage is not settable by PATCH, not even to stay in it.
                fx.err(errs, "NotSupportedChoice", "status_id", fx.NOT_CHOICE)
                return
            if sid in CLOSED:
                pipeline = pipeline or self.acc.main_pipeline
            elif pipeline is not None and (pipeline_given or pipeline.status(sid)):
                if pipeline.status(sid) is None:
                    fx.err(errs, "NotSupportedChoice", "status_id", fx.NOT_CHOICE)
                    return
            else:
                pipeline = next((p for p in self.acc.pipelines if p.status(sid)), None)
                if pipeline is None:
                    fx.err(errs, "NotSupportedChoice", "status_id", fx.NOT_CHOICE)
                    return
            changes["status_id"], changes["pipeline_id"] = sid, pipeline.id
        elif old is None:
            pipeline = pipeline or self.acc.main_pipeline
            changes["status_id"], changes["pipeline_id"] = pipeline.first_status().id, pipeline.id
        elif pipeline_given and pipeline is not None and pipeline.id != old["pipeline_id"]:
            changes["status_id"], changes["pipeline_id"] = pipeline.first_status().id, pipeline.id

    def _lead_contacts(
        self, current: Any, embedded: dict[str, Any], errs: fx.Errors
    ) -> tuple[tuple[int, bool], ...]:
        linked = list(current)
        raw = embedded["contacts"]
        if not isinstance(raw, list):
            fx.type_error(errs, "_embedded.contacts", "array")
            return tuple(linked)
        for k, ref in enumerate(raw):
            if not isinstance(ref, dict) or not fx.is_int(ref.get("id")):
                fx.err(errs, "NotBlank", f"_embedded.contacts.{k}.id", fx.NOT_BLANK)
                continue
            if self.acc.tables["contacts"].get(ref["id"]) is None:
                fx.err(errs, "NotSupportedChoice", f"_embedded.contacts.{k}.id", fx.NOT_CHOICE)
                continue
            linked = link_contact(linked, ref["id"], bool(ref.get("is_main")))
        return tuple(linked)

    def _build_tasks(self, item: dict[str, Any], old: Record | None, errs: fx.Errors) -> Record:
        changes: dict[str, Any] = {}
        text = fx.get_str(item, "text", errs)
        if text is not None:
            changes["text"] = text
        till = fx.get_int(item, "complete_till", errs)
        if till is not None:
            changes["complete_till"] = till
        if old is None:
            # A task must have a text and a due date (https://www.amocrm.ru/developers/content/crm_platform/tasks-api).
            if not text:
                fx.err(errs, "NotBlank", "text", fx.NOT_BLANK)
            if till is None and "complete_till" not in item:
                fx.err(errs, "NotBlank", "complete_till", fx.NOT_BLANK)
        elif "text" in item and not text:
            fx.err(errs, "NotBlank", "text", fx.NOT_BLANK)
        if "task_type_id" in item:
            ttype = fx.get_int(item, "task_type_id", errs)
            if ttype is not None and ttype not in (1, 2):
                fx.err(errs, "NotSupportedChoice", "task_type_id", fx.NOT_CHOICE)
            elif ttype is not None:
                changes["task_type_id"] = ttype
        responsible = fx.get_user(self.acc, item, "responsible_user_id", errs)
        if responsible is not None:
            changes["responsible_user_id"] = responsible
        for key in ("duration", "created_by", "updated_by", "created_at", "updated_at"):
            value = fx.get_int(item, key, errs)
            if value is not None:
                changes[key] = value
        if "is_completed" in item:
            if not isinstance(item["is_completed"], bool):
                fx.type_error(errs, "is_completed", "bool")
            else:
                changes["is_completed"] = item["is_completed"]
        if "result" in item:
            result = item["result"]
            if isinstance(result, dict) and isinstance(result.get("text"), str):
                changes["result"] = result["text"]
            elif result not in (None, []):
                fx.type_error(errs, "result", "object")
        self._task_entity(item, old, changes, errs)
        record = dict(old) if old else {
            "task_type_id": 1, "duration": 0, "is_completed": False, "result": None,
            "entity_id": None, "entity_type": None, "text": "", "complete_till": None,
        }  # fmt: skip
        record.update(changes)
        return self._stamp(record, old, changes)

    def _task_entity(
        self, item: dict[str, Any], old: Record | None, changes: dict[str, Any], errs: fx.Errors
    ) -> None:
        if "entity_type" not in item and "entity_id" not in item:
            return
        etype = item.get("entity_type", old["entity_type"] if old else None)
        eid = item.get("entity_id", old["entity_id"] if old else None)
        if etype not in ENTITY_TYPES:
            fx.err(errs, "NotSupportedChoice", "entity_type", fx.NOT_CHOICE)
            return
        if not fx.is_int(eid):
            fx.type_error(errs, "entity_id", "int")
            return
        if etype in self.acc.tables and self.acc.tables[etype].get(eid) is None:
            fx.err(errs, "NotSupportedChoice", "entity_id", fx.NOT_CHOICE)
            return
        changes["entity_type"], changes["entity_id"] = etype, eid

    # --- committing -------------------------------------------------------------------
    def insert(self, kind: str, record: Record, fire: bool = True) -> Record:
        table = self.acc.tables[kind]
        record["id"] = table.new_id()
        table.put(record)
        if kind == "leads":
            for contact_id, _main in record.get("contacts") or ():
                self.acc.link_contact(record["id"], contact_id)
        if fire:
            self.events.append(Event(kind, "add", self.items.entity(kind, record)))
            self.sb.add_event(
                self.acc, f"{SINGULAR[kind]}_added", SINGULAR[kind], record["id"], self.user_id
            )
        return record

    def replace(self, kind: str, old: Record, record: Record) -> None:
        self.acc.tables[kind].put(record)
        if kind == "leads":
            before = {c for c, _m in old.get("contacts") or ()}
            after = {c for c, _m in record.get("contacts") or ()}
            for contact_id in before - after:
                self.acc.unlink_contact(record["id"], contact_id)
            for contact_id in after - before:
                self.acc.link_contact(record["id"], contact_id)
        self.changed(kind, old, record)

    def changed(self, kind: str, old: Record, new: Record) -> None:
        """Pick the webhook actions for a change: status, responsible, update (see docs)."""
        singular = SINGULAR[kind]
        status = kind == "leads" and (
            old["status_id"] != new["status_id"] or old["pipeline_id"] != new["pipeline_id"]
        )
        responsible = old.get("responsible_user_id") != new.get("responsible_user_id")
        other = any(old.get(k) != new.get(k) for k in set(old) | set(new) if k not in QUIET_KEYS)
        old_pipeline = self.sb.config.webhook_old_pipeline_id
        if status:
            item = self.items.lead(new, old, status=True, old_pipeline=old_pipeline)
            self.events.append(Event(kind, "status", item))
            self.sb.add_event(
                self.acc, "lead_status_changed", "lead", new["id"], self.user_id,
                [{"lead_status": {"id": new["status_id"], "pipeline_id": new["pipeline_id"]}}],
                [{"lead_status": {"id": old["status_id"], "pipeline_id": old["pipeline_id"]}}],
            )  # fmt: skip
        if responsible:
            # `responsible_*` subscribers get their own action; contacts also carry
            # old_responsible_user_id inside `update`, as in Kommo's examples.
            flags = {"responsible": True} if kind == "leads" else {}
            item = self.items.entity(kind, new, old, **flags)
            self.events.append(Event(kind, "responsible", item))
            self.sb.add_event(
                self.acc, "entity_responsible_changed", singular, new["id"], self.user_id,
                [{"responsible_user": {"id": new["responsible_user_id"]}}],
                [{"responsible_user": {"id": old["responsible_user_id"]}}],
            )  # fmt: skip
        wants_update = kind != "leads" or other or not (status or responsible)
        if wants_update or (status and self.sb.config.webhook_status_also_update):
            self.events.append(Event(kind, "update", self.items.entity(kind, new, old)))
        if kind == "tasks" and new["is_completed"] and not old["is_completed"]:
            self.sb.add_event(self.acc, "task_completed", "task", new["id"], self.user_id)
        if old.get("cf") != new.get("cf"):
            self.sb.add_event(
                self.acc, "custom_field_value_changed", singular, new["id"], self.user_id
            )
        if kind == "leads" and old.get("price") != new.get("price"):
            self.sb.add_event(self.acc, "sale_field_changed", "lead", new["id"], self.user_id)
        if kind == "tasks" and new.get("result") and new.get("result") != old.get("result"):
            self.sb.add_event(self.acc, "task_result_added", "task", new["id"], self.user_id)
        if old.get("name") != new.get("name") and kind != "tasks":
            self.sb.add_event(self.acc, "name_field_changed", singular, new["id"], self.user_id)

    def remove(self, kind: str, record: Record) -> None:
        acc = self.acc
        acc.tables[kind].delete(record["id"])
        if kind == "leads":
            for contact_id, _main in record.get("contacts") or ():
                acc.unlink_contact(record["id"], contact_id)
            trashed = dict(record, is_deleted=True, updated_at=self.now)
            acc.tables["leads"].trash[record["id"]] = trashed
        elif kind == "contacts":
            leads = acc.tables["leads"]
            for lead_id in acc.leads_of_contact(record["id"]):
                lead = leads.get(lead_id)
                if lead is not None:
                    kept = tuple(c for c in lead["contacts"] if c[0] != record["id"])
                    leads.put(dict(lead, contacts=kept))
            acc.contact_leads.pop(record["id"], None)
        elif kind == "companies":
            for table in (acc.tables["contacts"], acc.tables["leads"]):
                for other in [
                    r for r in table.records.values() if r.get("company_id") == record["id"]
                ]:
                    table.put(dict(other, company_id=None))
        self.events.append(Event(kind, "delete", self.items.deleted(kind, record)))
        self.sb.add_event(
            acc, f"{SINGULAR[kind]}_deleted", SINGULAR[kind], record["id"], self.user_id
        )

    def flush(self) -> None:
        events, self.events = self.events, []
        self.sb.notify(self.acc, events)


def link_contact(linked: list[Any], contact_id: int, is_main: bool) -> list[tuple[int, bool]]:
    """Add a contact to a lead; the first contact, or one marked is_main, becomes the main one."""
    out = [(c, m) for c, m in linked if c != contact_id]
    main = is_main or not out
    if main:
        out = [(c, False) for c, _m in out]
        out.insert(0, (contact_id, True))
    else:
        out.append((contact_id, False))
    return out
