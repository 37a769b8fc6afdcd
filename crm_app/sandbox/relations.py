"""Writes that join entities: complex lead add, notes and entity links."""

from __future__ import annotations

from typing import Any

from crm_app.sandbox import fields as fx
from crm_app.sandbox.store import Record
from crm_app.sandbox.webhooks import SINGULAR, Event
from crm_app.sandbox.writes import ValidationFailed, Writer, check_each, link_contact

COMPLEX_LIMIT = 50
NOTE_TYPES = (
    "common", "call_in", "call_out", "service_message", "extended_service_message",
    "message_cashier", "geolocation", "sms_in", "sms_out", "attachment",
)  # fmt: skip
# Which entity types each kind may link to (https://www.amocrm.ru/developers/content/crm_platform/entity-links-api).
LINKABLE = {
    "leads": ("contacts", "companies", "catalog_elements"),
    "contacts": ("companies", "catalog_elements", "customers"),
    "companies": ("contacts", "catalog_elements", "customers"),
}


class Relations(Writer):
    # --- POST /api/v4/leads/complex ---------------------------------------------------
    def complex(self, items: list[Any]) -> list[dict[str, Any]]:
        acc = self.acc
        with acc.lock:
            # Duplicate control compares with data that existed before the call only
            # (https://www.amocrm.ru/developers/content/crm_platform/leads-api, complex add).
            known = self._contact_index() if self.sb.config.duplicate_control else None
            plans = check_each(items, lambda item, errs: self._plan_complex(item, errs, known))
            results = self._commit_all(plans)
        self.flush()
        return results

    def _commit_all(self, plans: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
        """Commit every planned item; with ``complex_merge_in_batch`` (UNCONFIRMED, off by
        default) items whose new contacts share a phone or e-mail become one deal whose
        ``request_id`` array lists them all, ``merged: true`` (§4.5 reads both ways)."""
        in_batch = self.sb.config.duplicate_control and self.sb.config.complex_merge_in_batch
        fields = self._key_fields()
        seen: dict[str, dict[str, Any]] = {}
        results: list[dict[str, Any]] = []
        for plan, rid in plans:
            entry = plan.get("contact")
            keys: list[str] = []
            if in_batch and entry is not None and entry[0] == "new":
                keys = contact_keys(entry[1], *fields)
            target = next((seen[k] for k in keys if k in seen), None)
            if target is not None:
                target["request_id"].append(rid)
                target["merged"] = True
                continue
            result = self._commit_complex(plan, rid)
            results.append(result)
            for key in keys:
                seen.setdefault(key, result)
        return results

    def _plan_complex(
        self, item: dict[str, Any], errs: fx.Errors, known: dict[str, int] | None
    ) -> dict[str, Any]:
        raw_embedded = item.get("_embedded")
        embedded = raw_embedded if isinstance(raw_embedded, dict) else {}
        lead_item = {k: v for k, v in item.items() if k != "_embedded"}
        lead_item["_embedded"] = {k: v for k, v in embedded.items() if k == "tags"}
        lead = self.build("leads", lead_item, None, errs)
        if isinstance(embedded.get("metadata"), dict):
            # Incoming ("unsorted") leads land in the pipeline's unsorted stage; status_id is ignored.
            pipeline = self.acc.pipeline(lead["pipeline_id"]) or self.acc.main_pipeline
            lead["status_id"] = pipeline.unsorted_status().id
        plan: dict[str, Any] = {"lead": lead, "contact": None, "company": None, "merged": False}
        for kind, key in (("contacts", "contact"), ("companies", "company")):
            refs = embedded.get(kind)
            if not refs:
                continue
            if not isinstance(refs, list) or not isinstance(refs[0], dict):
                fx.type_error(errs, f"_embedded.{kind}", "array")
                continue
            ref = refs[0]
            sub: fx.Errors = []
            if "id" in ref:
                if not fx.is_int(ref["id"]) or self.acc.tables[kind].get(ref["id"]) is None:
                    fx.err(errs, "NotSupportedChoice", f"_embedded.{kind}.0.id", fx.NOT_CHOICE)
                plan[key] = ("existing", ref.get("id"))
                continue
            record = self.build(kind, ref, None, sub)
            for problem in sub:
                problem["path"] = f"_embedded.{kind}.0.{problem['path']}".rstrip(".")
            errs.extend(sub)
            duplicate = self._duplicate(record, known) if kind == "contacts" else None
            if duplicate is not None:
                plan[key] = ("existing", duplicate)
                plan["merged"] = True
            else:
                plan[key] = ("new", record)
        return plan

    def _commit_complex(self, plan: dict[str, Any], rid: str) -> dict[str, Any]:
        ids: dict[str, int | None] = {"contact": None, "company": None}
        for key, kind in (("company", "companies"), ("contact", "contacts")):
            entry = plan[key]
            if entry is None:
                continue
            mode, value = entry
            if mode == "existing":
                ids[key] = value
                continue
            if kind == "contacts" and ids["company"] is not None:
                value["company_id"] = ids["company"]  # a new contact and company are linked
            ids[key] = self.insert(kind, value)["id"]
        lead = plan["lead"]
        if ids["contact"] is not None:
            lead["contacts"] = tuple(link_contact(list(lead["contacts"]), ids["contact"], True))
        if ids["company"] is not None:
            lead["company_id"] = ids["company"]
        self.insert("leads", lead)
        return {
            "id": lead["id"],
            "contact_id": ids["contact"],
            "company_id": ids["company"],
            "request_id": [rid],
            "merged": plan["merged"],
        }

    def _key_fields(self) -> tuple[int, int]:
        """Ids of the contacts' PHONE and EMAIL fields that duplicate control compares (0: none)."""
        phone = self.acc.field_by_code("contacts", "PHONE")
        email = self.acc.field_by_code("contacts", "EMAIL")
        return (phone.id if phone else 0, email.id if email else 0)

    def _contact_index(self) -> dict[str, int]:
        fields = self._key_fields()
        index: dict[str, int] = {}
        for record in self.acc.tables["contacts"].records.values():
            for key in contact_keys(record, *fields):
                index.setdefault(key, record["id"])
        return index

    def _duplicate(self, record: Record, known: dict[str, int] | None) -> int | None:
        if not known:
            return None
        fields = self._key_fields()
        for key in contact_keys(record, *fields):
            if key in known:
                return known[key]
        return None

    # --- notes ------------------------------------------------------------------------
    def add_notes(
        self, kind: str, items: list[Any], entity_id: int | None
    ) -> list[tuple[Record, str]]:
        acc = self.acc
        table = acc.tables["notes"]
        with acc.lock:
            built = check_each(items, lambda item, errs: self._note(kind, item, entity_id, errs))
            for note, _rid in built:
                note["id"] = table.new_id()
                table.put(note)
                self.events.append(Event(kind, "note", self.items.note(kind, note)))
                self.sb.add_event(
                    acc, f"{note['note_type']}_note_added", SINGULAR[kind], note["entity_id"],
                    self.user_id, [{"note": {"id": note["id"]}}],
                )  # fmt: skip
        self.flush()
        return built

    def update_notes(
        self, kind: str, items: list[Any], entity_id: int | None
    ) -> list[tuple[Record, str]]:
        """PATCH notes: each item names its `id`; `params` replace the old ones whole."""
        acc = self.acc
        table = acc.tables["notes"]

        def check(item: dict[str, Any], errs: fx.Errors) -> Record | None:
            item_id = item.get("id")
            old = table.get(item_id) if isinstance(item_id, int) else None
            if old is None or old["entity_type"] != kind:
                fx.err(errs, "NotFound", "id", "Entity not found")
                return None
            if entity_id is not None and old["entity_id"] != entity_id:
                fx.err(errs, "NotSupportedChoice", "entity_id", fx.NOT_CHOICE)
                return None
            merged = {"note_type": old["note_type"], "params": old["params"], **item}
            merged.pop("id", None)
            fresh = self._note(kind, merged, old["entity_id"], errs)
            if errs:
                return None
            note = dict(old, note_type=fresh["note_type"], params=fresh["params"])
            note.update(updated_at=self.now, updated_by=self.user_id)
            return note

        with acc.lock:
            built = check_each(items, check)
            for note, _rid in built:
                table.put(note)
                if self.sb.config.note_update_webhook:
                    self.events.append(Event(kind, "note", self.items.note(kind, note)))
        self.flush()
        return built

    def _note(
        self, kind: str, item: dict[str, Any], entity_id: int | None, errs: fx.Errors
    ) -> Record:
        target = entity_id if entity_id is not None else item.get("entity_id")
        if not fx.is_int(target):
            fx.err(errs, "NotBlank", "entity_id", fx.NOT_BLANK)
        elif self.acc.tables[kind].get(target) is None:
            fx.err(errs, "NotSupportedChoice", "entity_id", fx.NOT_CHOICE)
        note_type = item.get("note_type")
        if note_type not in NOTE_TYPES:
            fx.err(errs, "NotSupportedChoice", "note_type", fx.NOT_CHOICE)
        params = item.get("params")
        if params is not None and not isinstance(params, dict):
            fx.type_error(errs, "params", "object")
            params = {}
        params = params or {}
        if note_type == "common" and not (isinstance(params.get("text"), str) and params["text"]):
            fx.err(errs, "NotBlank", "params.text", fx.NOT_BLANK)
        responsible = fx.get_user(self.acc, item, "responsible_user_id", errs)
        return {
            "entity_id": target,
            "entity_type": kind,
            "created_by": item.get("created_by")
            if fx.is_int(item.get("created_by"))
            else self.user_id,
            "updated_by": self.user_id,
            "created_at": item.get("created_at") if fx.is_int(item.get("created_at")) else self.now,
            "updated_at": self.now,
            "responsible_user_id": responsible or self.user_id,
            "note_type": note_type,
            "params": params,
        }

    # --- links ------------------------------------------------------------------------
    def link(self, kind: str, pairs: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        """Link (entity_id, link item) pairs; every pair is checked before anything changes."""
        acc = self.acc
        with acc.lock:
            problems = []
            for index, (entity_id, item) in enumerate(pairs):
                errs = self._check_link(kind, entity_id, item)
                if errs:
                    problems.append({"request_id": str(index), "errors": errs})
            if problems:
                raise ValidationFailed(problems)
            out = [self._apply_link(kind, entity_id, item) for entity_id, item in pairs]
        self.flush()
        return out

    def _check_link(self, kind: str, entity_id: Any, item: Any) -> fx.Errors:
        errs: fx.Errors = []
        if not isinstance(item, dict):
            fx.type_error(errs, "", "object")
            return errs
        if not fx.is_int(entity_id) or self.acc.tables[kind].get(entity_id) is None:
            fx.err(errs, "NotSupportedChoice", "entity_id", fx.NOT_CHOICE)
        target_type = item.get("to_entity_type")
        if target_type not in LINKABLE[kind]:
            fx.err(errs, "NotSupportedChoice", "to_entity_type", fx.NOT_CHOICE)
        target = item.get("to_entity_id")
        if not fx.is_int(target):
            fx.err(errs, "NotBlank", "to_entity_id", fx.NOT_BLANK)
        elif target_type in self.acc.tables and self.acc.tables[target_type].get(target) is None:
            fx.err(errs, "NotSupportedChoice", "to_entity_id", fx.NOT_CHOICE)
        return errs

    def _apply_link(self, kind: str, entity_id: int, item: dict[str, Any]) -> dict[str, Any]:
        acc = self.acc
        target_type, target = item["to_entity_type"], item["to_entity_id"]
        metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else None
        shown: Any = metadata
        table = acc.tables[kind]
        old = table.get(entity_id)
        assert old is not None
        new = dict(old)
        if kind == "leads" and target_type == "contacts":
            is_main = bool(metadata and metadata.get("is_main"))
            new["contacts"] = tuple(link_contact(list(old.get("contacts") or ()), target, is_main))
            main = next(m for c, m in new["contacts"] if c == target)
            shown = {"main_contact": main}
        elif kind == "contacts" and target_type == "companies":
            new["company_id"] = target
            shown = None
        elif kind == "companies" and target_type == "contacts":
            contact = acc.tables["contacts"].get(target)
            assert contact is not None
            self.replace(
                "contacts", contact, dict(contact, company_id=entity_id, updated_at=self.now)
            )
            shown = None
        elif target_type == "companies":
            new["company_id"] = target
            shown = None
        else:
            links = acc.catalog_links.setdefault((kind, entity_id), [])
            links[:] = [x for x in links if x["to_entity_id"] != target]
            links.append(
                {"to_entity_id": target, "to_entity_type": target_type, "metadata": metadata}
            )
        if new != old:
            new["updated_at"] = self.now
            self.replace(kind, old, new)
        return {
            "entity_id": entity_id,
            "entity_type": kind,
            "to_entity_id": target,
            "to_entity_type": target_type,
            "metadata": shown,
        }

    def unlink(self, kind: str, pairs: list[tuple[Any, Any]]) -> None:
        acc = self.acc
        with acc.lock:
            for entity_id, item in pairs:
                if not isinstance(item, dict) or self._check_link(kind, entity_id, item):
                    continue
                old = acc.tables[kind].get(entity_id)
                assert old is not None
                target_type, target = item["to_entity_type"], item["to_entity_id"]
                new = dict(old)
                if kind == "leads" and target_type == "contacts":
                    kept = [(c, m) for c, m in old.get("contacts") or () if c != target]
                    if kept and not any(m for _c, m in kept):
                        kept[0] = (kept[0][0], True)
                    new["contacts"] = tuple(kept)
                elif target_type == "companies" and old.get("company_id") == target:
                    new["company_id"] = None
                elif kind == "companies" and target_type == "contacts":
                    contact = acc.tables["contacts"].get(target)
                    if contact is not None and contact.get("company_id") == entity_id:
                        self.replace("contacts", contact, dict(contact, company_id=None))
                else:
                    links = acc.catalog_links.get((kind, entity_id), [])
                    links[:] = [x for x in links if x["to_entity_id"] != target]
                if new != old:
                    new["updated_at"] = self.now
                    self.replace(kind, old, new)
        self.flush()

    def links_of(self, kind: str, entity_id: int) -> list[dict[str, Any]]:
        acc = self.acc
        record = acc.tables[kind].get(entity_id)
        if record is None:
            return []
        out: list[dict[str, Any]] = []
        for item in acc.catalog_links.get((kind, entity_id), []):
            out.append(dict(item))
        if kind == "leads":
            for contact_id, main in record.get("contacts") or ():
                out.append(
                    {"to_entity_id": contact_id, "to_entity_type": "contacts",
                     "metadata": {"main_contact": main}}
                )  # fmt: skip
        if kind == "companies":
            for contact_id in acc.contacts_of_company(entity_id):
                out.append(
                    {"to_entity_id": contact_id, "to_entity_type": "contacts", "metadata": None}
                )
        elif record.get("company_id"):
            out.append(
                {
                    "to_entity_id": record["company_id"],
                    "to_entity_type": "companies",
                    "metadata": None,
                }
            )
        return out


def contact_keys(record: Record, phone_id: int, email_id: int) -> list[str]:
    """Phones by their last 10 digits and e-mails in lower case: how duplicates are matched."""
    keys = []
    for fid, values in record.get("cf") or ():
        for value, _enum in values:
            if fid == phone_id:
                digits = "".join(ch for ch in str(value) if ch.isdigit())
                if len(digits) >= 10:
                    keys.append("p:" + digits[-10:])
            elif fid == email_id:
                keys.append("e:" + str(value).strip().lower())
    return keys
