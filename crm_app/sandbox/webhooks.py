"""Account webhook bodies: which change fires which setting, and the PHP-style form encoding."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from crm_app.sandbox.store import Account, Record

SETTINGS = frozenset(
    [f"{action}_{entity}" for action in ("add", "update", "delete", "responsible")
     for entity in ("lead", "contact", "company", "customer", "task")]
    + [f"restore_{e}" for e in ("lead", "contact", "company")]
    + [f"note_{e}" for e in ("lead", "contact", "company", "customer")]
    + ["add_talk", "update_talk", "status_lead", "add_chat_template_review",
       "add_message", "add_outgoing_message"]
)  # fmt: skip

# Body key and singular setting name per entity kind: tasks arrive under `task`, companies
# under `contacts` with type=company (https://www.amocrm.ru/developers/content/crm_platform/webhooks-format).
BODY_KEY = {"leads": "leads", "contacts": "contacts", "companies": "contacts", "tasks": "task"}
SINGULAR = {"leads": "lead", "contacts": "contact", "companies": "company", "tasks": "task"}
ELEMENT_TYPE = {"contacts": "1", "leads": "2", "companies": "3", "customers": "12"}
# Legacy numeric note types that account webhooks still carry (4 common, 5 attachment, …).
NOTE_TYPES = {
    "common": "4", "attachment": "5", "call_in": "10", "call_out": "11",
    "service_message": "25", "sms_in": "102", "sms_out": "103",
}  # fmt: skip


@dataclass
class Event:
    """One entity change as a webhook sees it."""

    kind: str  # leads | contacts | companies | tasks
    action: str  # add | update | delete | status | responsible | note | restore
    item: dict[str, Any]

    @property
    def setting(self) -> str:
        return f"{self.action}_{SINGULAR[self.kind]}"


def php_pairs(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    """Flatten like PHP http_build_query: nested keys, list indexes, nulls dropped, bools 1/0."""
    if value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            php_pairs(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            php_pairs(f"{prefix}[{index}]", item, out)
    elif isinstance(value, bool):
        out.append((prefix, "1" if value else "0"))
    else:
        out.append((prefix, str(value)))


def encode(body: dict[str, Any]) -> str:
    """Brackets as %5B/%5D, spaces as '+', UTF-8 percent-encoding (like the derived samples)."""
    pairs: list[tuple[str, str]] = []
    php_pairs("", body, pairs)
    return urlencode(pairs)


def build_body(account: Account, origin_domain: str, events: list[Event]) -> dict[str, Any]:
    """`account[...]` first (as in the practitioner's capture), then entity blocks in order."""
    body: dict[str, Any] = {
        "account": {
            "subdomain": account.subdomain,
            "id": str(account.id),
            "_links": {"self": f"https://{account.subdomain}.{origin_domain}"},
        }
    }
    for event in events:
        block = body.setdefault(BODY_KEY[event.kind], {})
        block.setdefault(event.action, []).append(event.item)
    return body


class ItemBuilder:
    """Webhook items: every value a string, dates as the docs show them per entity."""

    def __init__(self, account: Account, utc_offset: int, text_values: str) -> None:
        self.account = account
        self.tz = dt.timezone(dt.timedelta(hours=utc_offset))
        self.text_values = text_values

    def when(self, ts: int | None) -> str:
        """Task dates are account-local "YYYY-MM-DD HH:MM:SS" strings."""
        if ts is None:
            return ""
        return dt.datetime.fromtimestamp(ts, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def custom_fields(self, kind: str, cf: Any) -> list[dict[str, Any]]:
        entity = "companies" if kind == "companies" else kind
        fields = self.account.field_map(entity)
        out = []
        for fid, values in cf or ():
            meta = fields.get(fid)
            if meta is None:
                continue
            if meta.enums is not None:
                # Inside webhooks `enum` is the enum id, not its code.
                shaped: list[Any] = [
                    {"value": _text(v), "enum": "" if e is None else str(e)} for v, e in values
                ]
            elif self.text_values == "object":
                shaped = [{"value": _text(v)} for v, _e in values]
            else:
                shaped = [_text(v) for v, _e in values]
            item: dict[str, Any] = {"id": str(fid), "name": meta.name, "values": shaped}
            if meta.code:
                item["code"] = meta.code
            out.append(item)
        return out

    def tags(self, record: Record) -> list[dict[str, str]]:
        names = self.account.tag_names
        return [{"id": str(t), "name": names.get(t, "")} for t in record.get("tags") or ()]

    def lead(
        self,
        r: Record,
        old: Record | None = None,
        status: bool = False,
        responsible: bool = False,
        old_pipeline: bool = False,
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"id": str(r["id"]), "name": r["name"]}
        if status and old is not None:
            item["old_status_id"] = str(old["status_id"])
        item["status_id"] = str(r["status_id"])
        item["price"] = str(r["price"] or 0)
        item["responsible_user_id"] = str(r["responsible_user_id"])
        if responsible and old is not None:
            item["old_responsible_user_id"] = str(old["responsible_user_id"])
        item["last_modified"] = str(r["updated_at"])
        item["modified_user_id"] = str(r["updated_by"])
        item["created_user_id"] = str(r["created_by"])
        item["date_create"] = str(r["created_at"])
        item["pipeline_id"] = str(r["pipeline_id"])
        if status and old_pipeline and old is not None:
            item["old_pipeline_id"] = str(old["pipeline_id"])
        item["account_id"] = str(self.account.id)
        cf = self.custom_fields("leads", r.get("cf"))
        if cf:
            item["custom_fields"] = cf
        tags = self.tags(r)
        if tags:
            item["tags"] = tags
        item["created_at"] = str(r["created_at"])
        item["updated_at"] = str(r["updated_at"])
        return item

    def contact(self, kind: str, r: Record, old: Record | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": str(r["id"]),
            "name": r["name"],
            "responsible_user_id": str(r["responsible_user_id"]),
        }
        if old is not None and old["responsible_user_id"] != r["responsible_user_id"]:
            item["old_responsible_user_id"] = str(old["responsible_user_id"])
        item["date_create"] = str(r["created_at"])
        item["last_modified"] = str(r["updated_at"])
        item["created_user_id"] = str(r["created_by"])
        item["modified_user_id"] = str(r["updated_by"])
        company_id = r.get("company_id") if kind == "contacts" else None
        if company_id:
            company = self.account.tables["companies"].get(company_id)
            if company is not None:
                item["company_name"] = company["name"]
            item["linked_company_id"] = str(company_id)
        item["account_id"] = str(self.account.id)
        cf = self.custom_fields(kind, r.get("cf"))
        if cf:
            item["custom_fields"] = cf
        tags = self.tags(r)
        if tags:
            item["tags"] = tags
        leads = (
            self.account.leads_of_contact(r["id"])
            if kind == "contacts"
            else self.account.leads_of_company(r["id"])
        )
        if leads:
            item["linked_leads_id"] = {str(i): {"ID": str(i)} for i in leads}
        item["created_at"] = str(r["created_at"])
        item["updated_at"] = str(r["updated_at"])
        item["type"] = "contact" if kind == "contacts" else "company"
        return item

    def task(self, r: Record, old: Record | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": str(r["id"]),
            "element_id": str(r["entity_id"] or 0),
            "element_type": ELEMENT_TYPE.get(r["entity_type"] or "", "0"),
            "task_type": str(r["task_type_id"]),
            "date_create": self.when(r["created_at"]),
            "text": r["text"],
            "status": "1" if r["is_completed"] else "0",
            "account_id": str(self.account.id),
            "created_user_id": str(r["created_by"]),
            "last_modified": self.when(r["updated_at"]),
            "responsible_user_id": str(r["responsible_user_id"]),
            "complete_till": self.when(r["complete_till"]),
        }
        if old is not None:
            closed_now = r["is_completed"] and not old["is_completed"]
            item["action_close"] = "1" if closed_now else "0"
            if old["text"] != r["text"]:
                item["old_text"] = old["text"]
            if old["responsible_user_id"] != r["responsible_user_id"]:
                item["old_responsible_user_id"] = str(old["responsible_user_id"])
            if r.get("result") and r.get("result") != old.get("result"):
                item["result"] = {
                    "id": str(r.get("result_note_id") or r["id"]),
                    "text": r["result"],
                }
        item["created_at"] = str(r["created_at"])
        item["updated_at"] = str(r["updated_at"])
        item["complete_before"] = str(r["complete_till"])
        return item

    def deleted(self, kind: str, r: Record) -> dict[str, Any]:
        """Deletes carry the id (leads add status and pipeline, as in Kommo's example)."""
        item: dict[str, Any] = {"id": str(r["id"])}
        if kind == "leads":
            item["status_id"] = str(r["status_id"])
            item["pipeline_id"] = str(r["pipeline_id"])
        elif kind in ("contacts", "companies"):
            item["type"] = "contact" if kind == "contacts" else "company"
        elif kind == "tasks":
            item["element_id"] = str(r["entity_id"] or 0)
            item["element_type"] = ELEMENT_TYPE.get(r["entity_type"] or "", "0")
        return item

    def note(self, kind: str, note: Record) -> dict[str, Any]:
        params = note.get("params") or {}
        author = self.account.user(note["created_by"])
        metadata = {
            "event_source": {
                "id": note["created_by"],
                "author_name": author.name if author else "",
                "type": 1,
            }
        }
        # As in Kommo's documented example: legacy numeric type, `attachement` (sic), a
        # JSON-encoded `metadata` string, every value a string.
        body = {
            "text": str(params.get("text", "")),
            "attachement": "",
            "note_type": NOTE_TYPES.get(note["note_type"], "4"),
            "element_type": ELEMENT_TYPE.get(kind, "0"),
            "element_id": str(note["entity_id"]),
            "account_id": str(self.account.id),
            "metadata": json.dumps(metadata, ensure_ascii=False, separators=(",", ":")),
            "id": str(note["id"]),
            "created_at": str(note["created_at"]),
            "updated_at": str(note["updated_at"]),
            "created_by": str(note["created_by"]),
            "responsible_user_id": str(note["responsible_user_id"]),
        }
        return {"note": body, "type": SINGULAR[kind]}

    def entity(
        self, kind: str, r: Record, old: Record | None = None, **flags: bool
    ) -> dict[str, Any]:
        if kind == "leads":
            return self.lead(r, old, **flags)
        if kind == "tasks":
            return self.task(r, old)
        return self.contact(kind, r, old)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)
