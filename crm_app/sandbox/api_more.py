"""API v4 links, notes, webhook subscriptions and the events feed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from crm_app.sandbox import common, errors
from crm_app.sandbox import fields as fx
from crm_app.sandbox.api import list_page
from crm_app.sandbox.hal import link, page_links
from crm_app.sandbox.query import as_int, as_list, as_range, int_set, page_params
from crm_app.sandbox.relations import Relations
from crm_app.sandbox.webhooks import SETTINGS
from crm_app.sandbox.writes import ValidationFailed

bp = Blueprint("sandbox_more", __name__)

LINKABLE = "any(leads,contacts,companies)"


def _relations() -> Relations:
    return Relations(common.sandbox(), common.account(), common.user_id())


# --- links ----------------------------------------------------------------------------
def _links_hal(path: str, links: list[dict[str, Any]]) -> Response:
    body = {
        "_total_items": len(links),
        "_links": link(f"{common.origin()}{path}"),
        "_embedded": {"links": links},
    }
    return errors.hal(body)


def _links_body(path: str, links: list[dict[str, Any]]) -> Response:
    """A list of links; 204 when there are none (a link call answers 200 even then)."""
    if not links:
        return errors.no_content()
    return _links_hal(path, links)


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    """(entity_id, item) for the mass link and unlink calls, where each item names its entity."""
    return [(item.get("entity_id") if isinstance(item, dict) else None, item) for item in items]


@bp.get(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/links")
def links_of(kind: str, rid: int) -> Response:
    acc = common.account()
    with acc.lock:
        found = _relations().links_of(kind, rid)
    wanted = common.args().get("filter")
    if isinstance(wanted, dict) and wanted.get("to_entity_type"):
        found = [x for x in found if x["to_entity_type"] == wanted["to_entity_type"]]
    return _links_body(request.path, found)


@bp.get(f"/api/v4/<{LINKABLE}:kind>/links")
def mass_links(kind: str) -> Response:
    acc = common.account()
    wanted = common.args().get("filter")
    ids = int_set(wanted.get("entity_id")) if isinstance(wanted, dict) else set()
    out = []
    with acc.lock:
        relations = _relations()
        for rid in sorted(ids):
            for item in relations.links_of(kind, rid):
                out.append({"entity_id": rid, "entity_type": kind, **item})
    return _links_body(request.path, out)


@bp.post(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/link")
def link_one(kind: str, rid: int) -> Response:
    items = common.read_batch()
    return _do_link(kind, [(rid, item) for item in items])


@bp.post(f"/api/v4/<{LINKABLE}:kind>/link")
def link_many(kind: str) -> Response:
    return _do_link(kind, _pairs(common.read_batch()))


def _do_link(kind: str, pairs: list[tuple[Any, Any]]) -> Response:
    try:
        links = _relations().link(kind, pairs)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return _links_hal(request.path.rsplit("/", 1)[0] + "/links", links)


@bp.post(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/unlink")
def unlink_one(kind: str, rid: int) -> Response:
    items = common.read_batch()
    _relations().unlink(kind, [(rid, item) for item in items])
    return errors.no_content()


@bp.post(f"/api/v4/<{LINKABLE}:kind>/unlink")
def unlink_many(kind: str) -> Response:
    _relations().unlink(kind, _pairs(common.read_batch()))
    return errors.no_content()


# --- notes ----------------------------------------------------------------------------
def _note_filters(kind: str, entity_id: int | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"entity_type": kind}
    if entity_id is not None:
        extra["entity_id"] = str(entity_id)
    return extra


@bp.get(f"/api/v4/<{LINKABLE}:kind>/notes")
def notes(kind: str) -> Response:
    return list_page(kind, "notes", _note_filters(kind, None))


@bp.get(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/notes")
def notes_of(kind: str, rid: int) -> Response:
    return list_page(kind, "notes", _note_filters(kind, rid))


@bp.get(f"/api/v4/<{LINKABLE}:kind>/notes/<int:nid>")
@bp.get(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/notes/<int:nid>")
def note(kind: str, nid: int, rid: int | None = None) -> Response:
    acc = common.account()
    record = acc.tables["notes"].get(nid)
    if record is None or record["entity_type"] != kind or rid not in (None, record["entity_id"]):
        return errors.no_content()
    return errors.hal(common.renderer().note(record))


def _notes_created(kind: str, built: list[tuple[dict[str, Any], str]]) -> Response:
    api = f"{common.origin()}/api/v4"
    items = [
        {
            "id": n["id"],
            "entity_id": n["entity_id"],
            "request_id": rid,
            "_links": link(f"{api}/{kind}/{n['entity_id']}/notes/{n['id']}"),
        }
        for n, rid in built
    ]
    return errors.hal({"_links": link(f"{api}/{kind}/notes"), "_embedded": {"notes": items}})


@bp.post(f"/api/v4/<{LINKABLE}:kind>/notes")
def add_notes(kind: str) -> Response:
    items = common.read_batch()
    try:
        built = _relations().add_notes(kind, items, None)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return _notes_created(kind, built)


@bp.post(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/notes")
def add_notes_to(kind: str, rid: int) -> Response:
    items = common.read_batch()
    try:
        built = _relations().add_notes(kind, items, rid)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return _notes_created(kind, built)


def _notes_updated(kind: str, built: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    api = f"{common.origin()}/api/v4"
    return [
        {
            "id": n["id"],
            "entity_id": n["entity_id"],
            "updated_at": n["updated_at"],
            "request_id": rid,
            "_links": link(f"{api}/{kind}/{n['entity_id']}/notes/{n['id']}"),
        }
        for n, rid in built
    ]


@bp.patch(f"/api/v4/<{LINKABLE}:kind>/notes")
@bp.patch(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/notes")
def update_notes(kind: str, rid: int | None = None) -> Response:
    items = common.read_batch()
    try:
        built = _relations().update_notes(kind, items, rid)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    api = f"{common.origin()}/api/v4"
    items_out = _notes_updated(kind, built)
    return errors.hal({"_links": link(f"{api}/{kind}/notes"), "_embedded": {"notes": items_out}})


@bp.patch(f"/api/v4/<{LINKABLE}:kind>/<int:rid>/notes/<int:nid>")
def update_note(kind: str, rid: int, nid: int) -> Response:
    item = dict(common.read_object())
    item["id"] = nid
    try:
        built = _relations().update_notes(kind, [item], rid)
    except ValidationFailed as exc:
        return errors.validation(exc.errors)
    return errors.hal(_notes_updated(kind, built)[0])


# --- loss reasons ---------------------------------------------------------------------
# Documented by Kommo (Feb 2026) and the official PHP library; `loss_reasons_api` turns the
# routes off to act like an account where they are missing.
@bp.get("/api/v4/leads/loss_reasons")
def loss_reasons() -> Response:
    sb, acc = common.sandbox(), common.account()
    if not sb.config.loss_reasons_api:
        return errors.problem(404, "Not found")
    render = common.renderer()
    with acc.lock:
        items = [render.loss_reason(r) for r in sorted(acc.loss_reasons.values(), key=_by_sort)]
    if not items:
        return errors.no_content()
    api = f"{common.origin()}/api/v4"
    return errors.hal(
        {
            "_total_items": len(items),
            "_links": link(f"{api}/leads/loss_reasons"),
            "_embedded": {"loss_reasons": items},
        }
    )


def _by_sort(record: dict[str, Any]) -> tuple[int, int]:
    return int(record["sort"]), int(record["id"])


@bp.get("/api/v4/leads/loss_reasons/<int:rid>")
def loss_reason(rid: int) -> Response:
    sb, acc = common.sandbox(), common.account()
    if not sb.config.loss_reasons_api:
        return errors.problem(404, "Not found")
    record = acc.loss_reasons.get(rid)
    if record is None:
        return errors.no_content()
    return errors.hal(common.renderer().loss_reason(record))


# --- webhooks -------------------------------------------------------------------------
def _hook_public(hook: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "destination",
        "created_at",
        "updated_at",
        "account_id",
        "created_by",
        "sort",
        "disabled",
        "settings",
    )
    return {k: hook[k] for k in keys}


def _admin_only() -> Response | None:
    user = common.account().user(common.user_id())
    if user is None or not user.is_admin:
        # Webhooks need admin rights (https://www.amocrm.ru/developers/content/crm_platform/webhooks-api).
        return errors.problem(403, "Access denied")
    return None


@bp.get("/api/v4/webhooks")
def webhooks() -> Response:
    denied = _admin_only()
    if denied:
        return denied
    acc = common.account()
    wanted = common.args().get("filter")
    destination = wanted.get("destination") if isinstance(wanted, dict) else None
    with acc.lock:
        hooks = [_hook_public(h) for h in acc.webhooks.values()]
    if destination:
        hooks = [h for h in hooks if h["destination"] == destination]
    if not hooks:
        return errors.no_content()
    hooks.sort(key=lambda h: (h["sort"], h["id"]))
    return errors.hal({"_total_items": len(hooks), "_embedded": {"webhooks": hooks}})


@bp.post("/api/v4/webhooks")
def subscribe() -> Response:
    denied = _admin_only()
    if denied:
        return denied
    sb, acc = common.sandbox(), common.account()
    body = common.read_object()
    errs: fx.Errors = []
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination.startswith(("http://", "https://")):
        fx.err(errs, "NotSupportedChoice", "destination", "This value is not a valid URL.")
    raw_settings = body.get("settings")
    settings: list[Any] = raw_settings if isinstance(raw_settings, list) else []
    if not settings:
        fx.err(errs, "NotBlank", "settings", fx.NOT_BLANK)
    else:
        for k, value in enumerate(settings):
            if value not in SETTINGS:
                fx.err(errs, "NotSupportedChoice", f"settings.{k}", fx.NOT_CHOICE)
    sort = body.get("sort", 1)
    if not fx.is_int(sort):
        fx.type_error(errs, "sort", "int")
    if errs:
        return errors.validation([{"request_id": "0", "errors": errs}])
    now = sb.clock.now()
    with acc.lock:
        hook = next((h for h in acc.webhooks.values() if h["destination"] == destination), None)
        if hook is None:
            hook = {
                "id": acc.next_webhook_id, "destination": destination, "created_at": now,
                "updated_at": now, "account_id": acc.id, "created_by": common.user_id(),
                "sort": sort, "disabled": False, "settings": list(dict.fromkeys(settings)),
            }  # fmt: skip
            acc.next_webhook_id += 1
            acc.webhooks[hook["id"]] = hook
        else:
            # The same destination updates the existing hook; saving it again re-enables it.
            hook.update(
                settings=list(dict.fromkeys(settings)), sort=sort, updated_at=now, disabled=False
            )
            sb.dispatcher.reset_hook(hook["id"])
        public = _hook_public(hook)
    return errors.json_response(public, 201, "application/hal+json")


@bp.delete("/api/v4/webhooks")
def unsubscribe() -> Response:
    denied = _admin_only()
    if denied:
        return denied
    acc = common.account()
    body = common.read_object()
    destination = body.get("destination")
    with acc.lock:
        hook = next((h for h in acc.webhooks.values() if h["destination"] == destination), None)
        if hook is None:
            return errors.problem(404, "Webhook not found")
        del acc.webhooks[hook["id"]]
        hook["deleted"] = True
    return errors.no_content()


# --- events ---------------------------------------------------------------------------
EVENT_LIMIT = 100


@bp.get("/api/v4/events")
def events() -> Response:
    sb, acc = common.sandbox(), common.account()
    values = common.args()
    paging = page_params(values, min(sb.config.default_limit, EVENT_LIMIT), EVENT_LIMIT, "cap")
    raw_filter = values.get("filter")
    wanted = raw_filter if isinstance(raw_filter, dict) else {}
    with acc.lock:
        rows = list(reversed(acc.events))  # newest first
    rows = [e for e in rows if _event_matches(e, wanted)]
    start = (paging.page - 1) * paging.limit
    chunk = rows[start : start + paging.limit]
    if not chunk:
        return errors.no_content()
    api = f"{common.origin()}/api/v4"
    items = [_event_public(api, e) for e in chunk]
    pairs = list(request.args.items(multi=True))
    has_next = start + len(chunk) < len(rows)
    body = {
        "_page": paging.page,
        "_links": page_links(
            common.origin(), request.path, pairs, paging.limit, paging.page, has_next
        ),
        "_embedded": {"events": items},
    }
    return errors.hal(body)


@bp.get("/api/v4/events/<eid>")
def event(eid: str) -> Response:
    acc = common.account()
    with acc.lock:
        found = next((e for e in acc.events if e["id"] == eid), None)
    if found is None:
        return errors.no_content()
    return errors.hal(_event_public(f"{common.origin()}/api/v4", found))


PLURAL = {"lead": "leads", "contact": "contacts", "company": "companies", "task": "tasks"}


def _event_public(api: str, e: dict[str, Any]) -> dict[str, Any]:
    body = dict(e)
    body["_links"] = link(f"{api}/events/{e['id']}")
    plural = PLURAL.get(e["entity_type"], e["entity_type"])
    body["_embedded"] = {
        "entity": {"id": e["entity_id"], "_links": link(f"{api}/{plural}/{e['entity_id']}")}
    }
    return body


def _event_matches(e: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if "id" in wanted and e["id"] not in {str(v) for v in as_list(wanted["id"])}:
        return False
    if "created_at" in wanted:
        bounds = as_range(wanted["created_at"])
        if bounds:
            low, high = bounds
            if (low is not None and e["created_at"] < low) or (
                high is not None and e["created_at"] > high
            ):
                return False
    if "entity" in wanted and e["entity_type"] not in {str(v) for v in as_list(wanted["entity"])}:
        return False
    if "entity_id" in wanted and e["entity_id"] not in int_set(wanted["entity_id"]):
        return False
    if "type" in wanted and e["type"] not in {str(v) for v in as_list(wanted["type"])}:
        return False
    if "created_by" in wanted:
        users = {as_int(v) for v in as_list(wanted["created_by"])}
        if e["created_by"] not in users:
            return False
    return True
