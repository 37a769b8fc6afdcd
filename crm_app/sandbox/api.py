"""API v4 entity endpoints: lists, get by id, batch create and update, complex add."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from crm_app.sandbox import common, errors
from crm_app.sandbox.errors import ApiError
from crm_app.sandbox.hal import link, page_links
from crm_app.sandbox.query import build_spec, page_params, run
from crm_app.sandbox.relations import COMPLEX_LIMIT, Relations
from crm_app.sandbox.store import Record
from crm_app.sandbox.writes import ValidationFailed, Writer

bp = Blueprint("sandbox_api", __name__)

KINDS = "any(leads,contacts,companies,tasks)"


def list_page(
    kind: str, rows_for: Any = None, extra_filters: dict[str, Any] | None = None
) -> Response:
    """One HAL page of a list, or 204 when the page is empty (https://www.amocrm.ru/developers/content/api/recommendations)."""
    sb, acc = common.sandbox(), common.account()
    cfg = sb.config
    values = common.args()
    with_ = common.with_set(values)
    table_kind = "notes" if rows_for == "notes" else kind
    table = acc.tables[table_kind]
    # Filters are a paid add-on on amocrm.ru; without it they are silently ignored
    # (https://www.amocrm.ru/developers/content/crm_platform/filters-api).
    # Tasks and notes document their own filters, which keep working.
    use_filters = cfg.api_filter or table_kind in ("tasks", "notes")
    if extra_filters:
        values = dict(values)
        merged = dict(values.get("filter") or {}) if use_filters else {}
        merged.update(extra_filters)
        values["filter"] = merged
        use_filters = True
    spec = build_spec(table_kind, values, use_filters)
    paging = page_params(values, cfg.default_limit, cfg.max_limit, cfg.over_limit)
    render = common.renderer()
    start = (paging.page - 1) * paging.limit
    with acc.lock:
        if kind == "leads" and "only_deleted" in with_:
            rows: list[Record] = list(acc.tables["leads"].trash.values())
        else:
            rows = run(table_kind, acc, table, spec, sb.search)
        chunk = rows[start : start + paging.limit]
        if cfg.next_link == "exact":
            has_next = start + len(chunk) < len(rows)
        else:
            has_next = len(chunk) == paging.limit
        items = [render.entity(table_kind, r, with_) for r in chunk]
    if not items:
        return errors.no_content()
    pairs = list(request.args.items(multi=True))
    body = {
        "_page": paging.page,
        "_links": page_links(
            common.origin(), request.path, pairs, paging.limit, paging.page, has_next
        ),
        "_embedded": {table_kind: items},
    }
    return errors.hal(body)


@bp.get(f"/api/v4/<{KINDS}:kind>")
def list_entities(kind: str) -> Response:
    return list_page(kind)


@bp.get(f"/api/v4/<{KINDS}:kind>/<int:rid>")
def get_entity(kind: str, rid: int) -> Response:
    acc = common.account()
    with_ = common.with_set(common.args())
    with acc.lock:
        record = acc.tables[kind].get(rid)
        if record is None and kind == "leads" and "only_deleted" in with_:
            record = acc.tables["leads"].trash.get(rid)
        if record is None:
            return errors.no_content()  # unknown ids answer 204, not 404
        body = common.renderer().entity(kind, record, with_)
    return errors.hal(body)


def _created(kind: str, built: list[tuple[Record, str]]) -> Response:
    api = f"{common.origin()}/api/v4"
    items = [
        {"id": r["id"], "request_id": rid, "_links": link(f"{api}/{kind}/{r['id']}")}
        for r, rid in built
    ]
    return errors.hal({"_links": link(f"{api}/{kind}"), "_embedded": {kind: items}})


def _updated_item(kind: str, record: Record, rid: str) -> dict[str, Any]:
    """Update answers differ per entity in the samples: contacts add name, tasks request_id."""
    api = f"{common.origin()}/api/v4"
    item: dict[str, Any] = {"id": record["id"]}
    if kind in ("contacts", "companies"):
        item["name"] = record["name"]
    item["updated_at"] = record["updated_at"]
    if kind == "tasks":
        item["request_id"] = rid
    item["_links"] = link(f"{api}/{kind}/{record['id']}")
    return item


def _writer() -> Writer:
    return Writer(common.sandbox(), common.account(), common.user_id())


@bp.post(f"/api/v4/<{KINDS}:kind>")
def create_entities(kind: str) -> Response:
    items = common.read_batch()
    try:
        built = _writer().create(kind, items)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return _created(kind, built)


@bp.patch(f"/api/v4/<{KINDS}:kind>")
def update_entities(kind: str) -> Response:
    items = common.read_batch()
    try:
        built = _writer().update(kind, items)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    api = f"{common.origin()}/api/v4"
    body = {
        "_links": link(f"{api}/{kind}"),
        "_embedded": {kind: [_updated_item(kind, r, rid) for r, rid in built]},
    }
    return errors.hal(body)


@bp.patch(f"/api/v4/<{KINDS}:kind>/<int:rid>")
def update_entity(kind: str, rid: int) -> Response:
    item = dict(common.read_object())
    item["id"] = rid
    try:
        built = _writer().update(kind, [item])
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    record, request_id = built[0]
    return errors.hal(_updated_item(kind, record, request_id))


@bp.post("/api/v4/leads/complex")
def complex_add() -> Response:
    body = common.read_json()
    if not isinstance(body, list) or not body:
        raise ApiError(errors.empty_body())
    if len(body) > COMPLEX_LIMIT:
        return errors.problem(422, f"Limit {COMPLEX_LIMIT} per page")
    writer = Relations(common.sandbox(), common.account(), common.user_id())
    try:
        results = writer.complex(body)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return errors.json_response(results)
