"""HAL rendering of entities and pages, shaped key by key like the documented samples."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from crm_app.sandbox.store import Account, CustomField, Pipeline, Record, Status, User


def link(href: str) -> dict[str, dict[str, str]]:
    return {"self": {"href": href}}


class Renderer:
    """Renders one account's records for one request origin (links are absolute, same origin)."""

    def __init__(self, account: Account, origin: str, enum_keys: str = "both") -> None:
        self.account = account
        self.origin = origin
        self.api = f"{origin}/api/v4"
        self.enum_keys = enum_keys
        self._fields: dict[str, dict[int, CustomField]] = {}

    # --- custom fields ----------------------------------------------------------------
    def cf_values(self, entity: str, cf: Any) -> list[dict[str, Any]] | None:
        if not cf:
            return None
        fields = self._fields.get(entity)
        if fields is None:
            fields = self._fields[entity] = self.account.field_map(entity)
        out = []
        for fid, values in cf:
            meta = fields.get(fid)
            if meta is None:
                continue
            out.append(
                {
                    "field_id": fid,
                    "field_name": meta.name,
                    "field_code": meta.code,
                    "field_type": meta.type,
                    "values": [self._value(meta, v, e) for v, e in values],
                }
            )
        return out or None

    def _value(self, meta: CustomField, value: Any, enum_id: int | None) -> dict[str, Any]:
        if meta.enums is None:
            return {"value": value}
        item: dict[str, Any] = {"value": value, "enum_id": enum_id}
        code = None
        if enum_id is not None:
            enum = meta.enum_by_id(enum_id)
            code = enum.code if enum else None
        # The docs show `enum` (https://www.amocrm.ru/developers/content/crm_platform/contacts-api), the official PHP
        # library reads `enum_code`: both by default.
        if self.enum_keys in ("both", "code"):
            item["enum_code"] = code
        if self.enum_keys in ("both", "enum") and meta.type == "multitext":
            item["enum"] = code
        return item

    def tags(self, record: Record) -> list[dict[str, Any]]:
        names = self.account.tag_names
        return [
            {"id": t, "name": names.get(t, ""), "color": None} for t in record.get("tags") or ()
        ]

    def ref(self, kind: str, rid: int) -> dict[str, Any]:
        return {"id": rid, "_links": link(f"{self.api}/{kind}/{rid}")}

    # --- entities ---------------------------------------------------------------------
    def contact(self, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        embedded: dict[str, Any] = {"tags": self.tags(r)}
        if "leads" in with_:
            embedded["leads"] = [
                self.ref("leads", i) for i in self.account.leads_of_contact(r["id"])
            ]
        if "customers" in with_:
            embedded["customers"] = []
        if "catalog_elements" in with_:
            embedded["catalog_elements"] = self._catalog("contacts", r["id"])
        company = r.get("company_id")
        embedded["companies"] = [self.ref("companies", company)] if company else []
        return {
            "id": r["id"],
            "name": r["name"],
            "first_name": r.get("first_name", ""),
            "last_name": r.get("last_name", ""),
            "responsible_user_id": r["responsible_user_id"],
            "group_id": r["group_id"],
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "closest_task_at": r["closest_task_at"],
            "custom_fields_values": self.cf_values("contacts", r.get("cf")),
            "account_id": self.account.id,
            "_links": link(f"{self.api}/contacts/{r['id']}"),
            "_embedded": embedded,
        }

    def company(self, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        embedded: dict[str, Any] = {"tags": self.tags(r)}
        if "leads" in with_:
            embedded["leads"] = [
                self.ref("leads", i) for i in self.account.leads_of_company(r["id"])
            ]
        if "contacts" in with_:
            embedded["contacts"] = [
                self.ref("contacts", i) for i in self.account.contacts_of_company(r["id"])
            ]
        return {
            "id": r["id"],
            "name": r["name"],
            "responsible_user_id": r["responsible_user_id"],
            "group_id": r["group_id"],
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "closest_task_at": r["closest_task_at"],
            "custom_fields_values": self.cf_values("companies", r.get("cf")),
            "account_id": self.account.id,
            "_links": link(f"{self.api}/companies/{r['id']}"),
            "_embedded": embedded,
        }

    def lead(self, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        if r.get("is_deleted"):
            return self._deleted_lead(r)
        body: dict[str, Any] = {
            "id": r["id"],
            "name": r["name"],
            "price": r["price"],
            "responsible_user_id": r["responsible_user_id"],
            "group_id": r["group_id"],
            "status_id": r["status_id"],
            "pipeline_id": r["pipeline_id"],
            "loss_reason_id": r["loss_reason_id"],
            "source_id": r["source_id"],
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "closed_at": r["closed_at"],
            "closest_task_at": r["closest_task_at"],
            "is_deleted": False,
            "custom_fields_values": self.cf_values("leads", r.get("cf")),
            "score": r["score"],
            "account_id": self.account.id,
        }
        if "is_price_modified_by_robot" in with_:
            body["is_price_modified_by_robot"] = False
        body["_links"] = link(f"{self.api}/leads/{r['id']}")
        embedded: dict[str, Any] = {"tags": self.tags(r)}
        if "catalog_elements" in with_:
            embedded["catalog_elements"] = self._catalog("leads", r["id"])
        if "loss_reason" in with_:
            # An array with one element, as in the docs' example (the field table says object).
            reason = self.account.loss_reasons.get(r.get("loss_reason_id") or 0)
            embedded["loss_reason"] = [self.loss_reason(reason)] if reason else []
        company = r.get("company_id")
        embedded["companies"] = [self.ref("companies", company)] if company else []
        if "contacts" in with_:
            embedded["contacts"] = [
                {"id": cid, "is_main": main, "_links": link(f"{self.api}/contacts/{cid}")}
                for cid, main in r.get("contacts") or ()
            ]
        if "source_id" in with_:
            embedded["source"] = None
        body["_embedded"] = embedded
        return body

    def _deleted_lead(self, r: Record) -> dict[str, Any]:
        """`with=only_deleted`: trashed leads keep id and timestamps, the rest is null (#254)."""
        return {
            "id": r["id"],
            "name": None,
            "price": None,
            "responsible_user_id": None,
            "group_id": None,
            "status_id": None,
            "pipeline_id": None,
            "loss_reason_id": None,
            "created_by": None,
            "updated_by": None,
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "closed_at": None,
            "closest_task_at": None,
            "is_deleted": True,
            "custom_fields_values": None,
            "score": None,
            "account_id": self.account.id,
            "_links": link(f"{self.api}/leads/{r['id']}"),
            "_embedded": {"tags": [], "companies": []},
        }

    def task(self, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        result = r.get("result")
        return {
            "id": r["id"],
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "responsible_user_id": r["responsible_user_id"],
            "group_id": r["group_id"],
            "entity_id": r["entity_id"],
            "entity_type": r["entity_type"],
            "duration": r["duration"],
            "is_completed": r["is_completed"],
            "task_type_id": r["task_type_id"],
            "text": r["text"],
            "result": {"text": result} if result else [],
            "complete_till": r["complete_till"],
            "account_id": self.account.id,
            "_links": link(f"{self.api}/tasks/{r['id']}"),
        }

    def loss_reason(self, r: Record) -> dict[str, Any]:
        return {
            **{k: r[k] for k in ("id", "name", "sort", "created_at", "updated_at")},
            "_links": link(f"{self.api}/leads/loss_reasons/{r['id']}"),
        }

    def note(self, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {
            "id": r["id"],
            "entity_id": r["entity_id"],
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "responsible_user_id": r["responsible_user_id"],
            "group_id": 0,
            "note_type": r["note_type"],
            "params": r["params"],
            "account_id": self.account.id,
            "_links": link(f"{self.api}/{r['entity_type']}/{r['entity_id']}/notes/{r['id']}"),
        }

    def entity(self, kind: str, r: Record, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        return getattr(self, kind[:-1] if kind != "companies" else "company")(r, with_)

    def _catalog(self, kind: str, rid: int) -> list[dict[str, Any]]:
        return [
            {"id": item["to_entity_id"], "metadata": item.get("metadata")}
            for item in self.account.catalog_links.get((kind, rid), [])
        ]

    # --- metadata ---------------------------------------------------------------------
    def status(self, pipeline: Pipeline, s: Status) -> dict[str, Any]:
        return {
            "id": s.id,
            "name": s.name,
            "sort": s.sort,
            "is_editable": s.is_editable,
            "pipeline_id": pipeline.id,
            "color": s.color,
            "type": s.type,
            "account_id": self.account.id,
            "_links": link(f"{self.api}/leads/pipelines/{pipeline.id}/statuses/{s.id}"),
        }

    def pipeline(self, p: Pipeline) -> dict[str, Any]:
        return {
            "id": p.id,
            "name": p.name,
            "sort": p.sort,
            "is_main": p.is_main,
            "is_unsorted_on": p.is_unsorted_on,
            "is_archive": p.is_archive,
            "account_id": self.account.id,
            "_links": link(f"{self.api}/leads/pipelines/{p.id}"),
            "_embedded": {"statuses": [self.status(p, s) for s in p.statuses]},
        }

    def custom_field(self, f: CustomField) -> dict[str, Any]:
        enums = None
        if f.enums is not None:
            enums = [
                {"id": e.id, "value": e.value, "sort": e.sort, "code": e.code} for e in f.enums
            ]
        return {
            "id": f.id,
            "name": f.name,
            "code": f.code,
            "sort": f.sort,
            "type": f.type,
            "entity_type": f.entity_type,
            "is_predefined": f.is_predefined,
            "is_deletable": f.is_deletable,
            "settings": None,
            "remind": None,
            "is_api_only": f.is_api_only,
            "group_id": None,
            "enums": enums,
            "required_statuses": None,
            "_links": link(f"{self.api}/custom_fields/{f.id}/"),
        }

    def user(self, u: User, with_: frozenset[str] = frozenset()) -> dict[str, Any]:
        level = "A" if u.is_admin else "M"
        entity_rights = {"view": level, "edit": level, "add": "A", "delete": level, "export": level}
        body: dict[str, Any] = {
            "id": u.id,
            "name": u.name,
            "email": u.email,
            "lang": u.lang,
            "rights": {
                "leads": dict(entity_rights),
                "contacts": dict(entity_rights),
                "companies": dict(entity_rights),
                "tasks": {"edit": "A", "delete": level},
                "mail_access": u.is_admin,
                "catalog_access": True,
                "status_rights": [],
                "is_admin": u.is_admin,
                "is_free": False,
                "is_active": True,
                "group_id": None,
                "role_id": None,
            },
        }
        if "uuid" in with_:
            body["uuid"] = u.uuid
        if "amojo_id" in with_:
            body["amojo_id"] = u.uuid
        if "user_rank" in with_:
            body["user_rank"] = "newbie"
        if "phone_number" in with_:
            body["phone_number"] = u.phone
        body["_links"] = link(f"{self.api}/users/{u.id}")
        embedded: dict[str, Any] = {}
        if "role" in with_:
            embedded["roles"] = []
        if "group" in with_:
            embedded["groups"] = [{"id": 0, "name": "Отдел продаж"}]
        if embedded:
            body["_embedded"] = embedded
        return body


def page_url(origin: str, path: str, pairs: list[tuple[str, str]], limit: int, page: int) -> str:
    """The request's own query with limit and page last, brackets left readable (as in samples)."""
    kept = [(k, v) for k, v in pairs if k not in ("page", "limit")]
    parts = [f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in kept]
    parts += [f"limit={limit}", f"page={page}"]
    return f"{origin}{path}?{'&'.join(parts)}"


def page_links(
    origin: str, path: str, pairs: list[tuple[str, str]], limit: int, page: int, has_next: bool
) -> dict[str, Any]:
    links: dict[str, Any] = {"self": {"href": page_url(origin, path, pairs, limit, page)}}
    if has_next:
        links["next"] = {"href": page_url(origin, path, pairs, limit, page + 1)}
    if page > 1:
        links["first"] = {"href": page_url(origin, path, pairs, limit, 1)}
        links["prev"] = {"href": page_url(origin, path, pairs, limit, page - 1)}
    return links
