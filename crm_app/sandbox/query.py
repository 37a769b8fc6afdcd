"""List queries: PHP-style `filter[...]`/`order[...]` parsing, matching, ordering, paging."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

from crm_app.sandbox.store import Account, EntityTable, Record

# Fields each entity can be ordered by (the `order` parameter of each list method, e.g.
# https://www.amocrm.ru/developers/content/crm_platform/leads-api); anything else is ignored like amoCRM does.
ORDER_FIELDS = {
    "leads": ("created_at", "updated_at", "id"),
    "contacts": ("updated_at", "id", "created_at"),
    "companies": ("updated_at", "id", "created_at"),
    "tasks": ("created_at", "updated_at", "complete_till", "id"),
    "notes": ("updated_at", "id", "created_at"),
}
RANGE_FIELDS = ("created_at", "updated_at", "closed_at", "closest_task_at", "complete_till")
LIST_FIELDS = ("id", "created_by", "updated_by", "responsible_user_id", "pipeline_id", "group_id")


def parse_nested(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """PHP-style keys to nested dicts: `filter[id][]=1&filter[id][]=2` → {"filter": {"id":
    {"0": "1", "1": "2"}}}; `[]` takes the next index, so lists are dicts with numeric keys."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = _key_parts(raw_key)
        node = root
        for part in parts[:-1]:
            key = part if part != "" else str(len(node))
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        last = parts[-1] if parts[-1] != "" else str(len(node))
        node[last] = value
    return root


def _key_parts(raw_key: str) -> list[str]:
    head, bracket, rest = raw_key.partition("[")
    if not bracket:
        return [raw_key]
    pieces = ("[" + rest).split("]")[:-1]
    return [head] + [p[1:] if p.startswith("[") else p for p in pieces]


def as_list(value: Any) -> list[Any]:
    """A filter value as a list: arrays, PHP `[0]`-keyed objects and scalars all work."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, str) and "," in value:
        return [v for v in value.split(",") if v != ""]
    return [value]


def as_int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def int_set(value: Any) -> set[int]:
    return {n for n in (as_int(v) for v in as_list(value)) if n is not None}


def as_range(value: Any) -> tuple[int | None, int | None] | None:
    """`[from]`/`[to]` bounds, or a scalar meaning "from this moment on".

    https://www.amocrm.ru/developers/content/crm_platform/tasks-api
    """
    if isinstance(value, dict):
        low, high = as_int(value.get("from")), as_int(value.get("to"))
        if low is None and high is None:
            return None
        return low, high
    if isinstance(value, list):
        value = value[0] if value else None
    low = as_int(value)
    return None if low is None else (low, None)


@dataclass(frozen=True)
class ListSpec:
    """A normalized list request; hashable so identical queries share one cached result."""

    filters: tuple[tuple[str, Any], ...]
    order: tuple[str, bool] | None  # (field, descending)
    query: str


def freeze(value: Any) -> Any:
    """Nested dicts as sorted tuples of pairs, so a spec can be a cache key."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def build_spec(kind: str, args: dict[str, Any], use_filters: bool) -> ListSpec:
    filters = args.get("filter") if use_filters else None
    frozen: tuple[tuple[str, Any], ...] = ()
    if isinstance(filters, dict):
        frozen = tuple(sorted((k, freeze(v)) for k, v in filters.items()))
    order = None
    raw_order = args.get("order")
    if isinstance(raw_order, dict):
        for name, direction in raw_order.items():
            if name in ORDER_FIELDS.get(kind, ()) and isinstance(direction, str):
                order = (name, direction.lower() == "desc")
                break
    query = args.get("query")
    query = query.strip().lower() if isinstance(query, str) else ""
    return ListSpec(frozen, order, query)


def thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return {k: thaw(v) for k, v in value}
    return value


def _predicates(
    kind: str, account: Account, filters: dict[str, Any]
) -> list[Callable[[Record], bool]]:
    preds: list[Callable[[Record], bool]] = []
    for name, raw in filters.items():
        if name in LIST_FIELDS and name != "id":
            wanted = int_set(raw)
            if wanted:
                preds.append(_get_in(name, wanted))
        elif name in RANGE_FIELDS:
            bounds = as_range(raw)
            if bounds:
                preds.append(_range_pred(name, *bounds))
        elif name == "name":
            names = {str(v).lower() for v in as_list(raw) if not isinstance(v, dict)}
            if names:

                def name_in(r: Record, w: set[str] = names) -> bool:
                    return str(r.get("name", "")).lower() in w

                preds.append(name_in)
        elif name == "price" and kind == "leads":
            bounds = as_range(raw) if isinstance(raw, dict) else None
            if bounds:
                preds.append(_range_pred("price", *bounds))
            else:
                prices = int_set(raw)
                if prices:
                    preds.append(_get_in("price", prices))
        elif name == "statuses" and kind == "leads":
            pairs: set[tuple[int | None, int | None]] = set()
            for item in as_list(raw):
                if isinstance(item, dict):
                    pairs.add((as_int(item.get("pipeline_id")), as_int(item.get("status_id"))))
            if pairs:

                def status_in(r: Record, w: set[tuple[int | None, int | None]] = pairs) -> bool:
                    return (r["pipeline_id"], r["status_id"]) in w

                preds.append(status_in)
        elif name == "custom_fields_values" and isinstance(raw, dict):
            preds.extend(_cf_predicates(raw))
        elif kind in ("tasks", "notes"):
            preds.extend(_task_predicates(name, raw))
    return preds


def _get_in(name: str, wanted: Container[Any]) -> Callable[[Record], bool]:
    return lambda r: r.get(name) in wanted


def _item_in(name: str, wanted: Container[Any]) -> Callable[[Record], bool]:
    return lambda r: r[name] in wanted


def _range_pred(name: str, low: int | None, high: int | None) -> Callable[[Record], bool]:
    def pred(r: Record) -> bool:
        value = r.get(name)
        if value is None:
            return False
        if low is not None and value < low:
            return False
        return not (high is not None and value > high)

    return pred


def _cf_predicates(raw: dict[str, Any]) -> list[Callable[[Record], bool]]:
    preds: list[Callable[[Record], bool]] = []
    for fid_text, wanted in raw.items():
        fid = as_int(fid_text)
        if fid is None:
            continue
        if isinstance(wanted, dict) and ("from" in wanted or "to" in wanted):
            bounds = as_range(wanted)
            if not bounds:
                continue
            low, high = bounds

            def pred(r: Record, f: int = fid, lo: int | None = low, hi: int | None = high) -> bool:
                for value in _cf_values(r, f):
                    num = as_int(value)
                    if num is not None and (lo is None or num >= lo) and (hi is None or num <= hi):
                        return True
                return False

            preds.append(pred)
        else:
            targets = {str(v).lower() for v in as_list(wanted)}

            def text_in(r: Record, f: int = fid, w: set[str] = targets) -> bool:
                return any(str(v).lower() in w for v in _cf_values(r, f))

            preds.append(text_in)
    return preds


def _cf_values(record: Record, fid: int) -> list[Any]:
    out: list[Any] = []
    for field_id, values in record.get("cf") or ():
        if field_id == fid:
            for value, enum_id in values:
                out.append(value)
                if enum_id is not None:
                    out.append(enum_id)
    return out


def _task_predicates(name: str, raw: Any) -> list[Callable[[Record], bool]]:
    if name == "is_completed":
        flags = {str(v) in ("1", "true") for v in as_list(raw)}
        return [_item_in("is_completed", flags)] if flags else []
    if name == "task_type":
        types = int_set(raw)
        return [_item_in("task_type_id", types)] if types else []
    if name == "entity_type":
        kinds = {str(v) for v in as_list(raw)}
        return [_item_in("entity_type", kinds)] if kinds else []
    if name == "entity_id":
        ids = int_set(raw)
        return [_item_in("entity_id", ids)] if ids else []
    if name == "note_type":
        note_types = {str(v) for v in as_list(raw)}
        return [_get_in("note_type", note_types)] if note_types else []
    return []


def run(
    kind: str, account: Account, table: EntityTable, spec: ListSpec, search: SearchIndex
) -> list[Record]:
    """All matching records in order; cached per table version."""

    def build() -> list[Record]:
        filters = {k: thaw(v) for k, v in spec.filters}
        ids = int_set(filters["id"]) if "id" in filters else None
        if ids is not None and ids:
            rows = [table.records[i] for i in sorted(ids) if i in table.records]
        else:
            rows = list(table.records.values())
        preds = _predicates(kind, account, filters)
        if preds:
            rows = [r for r in rows if all(p(r) for p in preds)]
        if spec.query:
            rows = [r for r in rows if spec.query in search.text(account, kind, r)]
        if spec.order is not None:
            name, desc = spec.order
            if name == "id":
                if desc:
                    rows.reverse()
            else:
                # id breaks ties so pages never overlap or skip records with equal timestamps.
                rows.sort(key=lambda r: (r.get(name) or 0, r["id"]), reverse=desc)
        return rows

    return table.cached((kind, spec), build)


class SearchIndex:
    """Lower-cased text of every filled field, built on first search and kept per record."""

    def text(self, account: Account, kind: str, record: Record) -> str:
        table = account.tables[kind]
        hit = table.search_text.get(record["id"])
        if hit is not None and hit[0] is record:
            return hit[1]
        parts = [str(record["id"])]
        for key in ("name", "first_name", "last_name", "text", "price"):
            value = record.get(key)
            if value not in (None, ""):
                parts.append(str(value))
        for _fid, values in record.get("cf") or ():
            for value, _enum in values:
                parts.append(str(value))
        for tag in record.get("tags") or ():
            parts.append(account.tag_names.get(tag, ""))
        text = "\n".join(parts).lower()
        table.search_text[record["id"]] = (record, text)
        return text


@dataclass
class PageParams:
    page: int
    limit: int


def page_params(args: dict[str, Any], default_limit: int, max_limit: int, over: str) -> PageParams:
    page = as_int(args.get("page"), 1) or 1
    limit = as_int(args.get("limit"), default_limit) or default_limit
    if limit < 1:
        limit = default_limit
    if limit > max_limit:
        # amoCRM caps at 250; above that, users report the default page size instead
        # (https://github.com/amocrm/amocrm-api-php/issues/210).
        limit = max_limit if over == "cap" else default_limit
    return PageParams(max(page, 1), limit)
