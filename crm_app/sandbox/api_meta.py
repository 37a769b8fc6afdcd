"""API v4 account metadata: account, users, pipelines and statuses, custom fields."""

from __future__ import annotations

import math
import uuid
from typing import Any

from flask import Blueprint, Response, request

from crm_app.sandbox import common, errors
from crm_app.sandbox.hal import link, page_links
from crm_app.sandbox.query import page_params

bp = Blueprint("sandbox_meta", __name__)

ENTITY_NAMES = {
    "leads": {
        "ru": {
            "gender": "f",
            "plural_form": {"default": "сделки", "genitive": "сделок", "dative": "сделкам"},
            "singular_form": {"default": "сделка", "genitive": "сделки", "dative": "сделке"},
        },
        "en": {
            "singular_form": {"default": "lead"},
            "plural_form": {"default": "leads"},
            "gender": "f",
        },
    }
}


@bp.get("/api/v4/account")
def account() -> Response:
    """Base fields always; the rest only when asked for with `with=`.

    https://www.amocrm.ru/developers/content/crm_platform/account-info
    """
    sb, acc = common.sandbox(), common.account()
    with_ = common.with_set(common.args())
    offset = sb.config.utc_offset
    body: dict[str, Any] = {
        "id": acc.id,
        "name": acc.name,
        "subdomain": acc.subdomain,
        "current_user_id": common.user_id(),
        "country": "RU",
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "is_loss_reason_enabled": True,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
    }
    if "is_api_filter_enabled" in with_:
        body["is_api_filter_enabled"] = sb.config.api_filter
    if "amojo_id" in with_:
        body["amojo_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"amojo:{acc.id}"))
    body["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"account:{acc.id}"))
    if "drive_url" in with_:
        body["drive_url"] = "https://drive-b.amocrm.ru"
    if "version" in with_:
        body["version"] = 16
    if "entity_names" in with_:
        body["entity_names"] = ENTITY_NAMES
    body["_links"] = link(f"{common.origin()}/api/v4/account")
    embedded: dict[str, Any] = {}
    if "amojo_rights" in with_:
        embedded["amojo_rights"] = {"can_direct": True, "can_create_groups": True}
    if "users_groups" in with_:
        embedded["users_groups"] = [{"id": 0, "name": "Отдел продаж", "uuid": None}]
    if "task_types" in with_:
        embedded["task_types"] = [
            {"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
            {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"},
        ]
    if "datetime_settings" in with_:
        embedded["datetime_settings"] = {
            "date_pattern": "d.m.Y H:i",
            "short_date_pattern": "d.m.Y",
            "short_time_pattern": "H:i",
            "date_formant": "d.m.Y",
            "time_format": "H:i:s",
            "timezone": "Europe/Moscow"
            if offset == 3
            else ("UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"),
            "timezone_offset": f"{'+' if offset >= 0 else '-'}{abs(offset):02d}:00",
        }
    if "invoices_settings" in with_:
        embedded["invoices_settings"] = {"lang": "ru", "invoices_catalog_id": None}
    if embedded:
        body["_embedded"] = embedded
    return errors.hal(body)


def _require_admin() -> Response | None:
    """Users methods need an admin token; others get 403 (https://www.amocrm.ru/developers/content/crm_platform/users-api)."""
    acc = common.account()
    user = acc.user(common.user_id())
    if user is None or not user.is_admin:
        return errors.problem(403, "Access denied")
    return None


@bp.get("/api/v4/users")
def users() -> Response:
    denied = _require_admin()
    if denied:
        return denied
    sb, acc = common.sandbox(), common.account()
    values = common.args()
    with_ = common.with_set(values)
    paging = page_params(values, sb.config.default_limit, sb.config.max_limit, sb.config.over_limit)
    start = (paging.page - 1) * paging.limit
    chunk = acc.users[start : start + paging.limit]
    if not chunk:
        return errors.no_content()
    render = common.renderer()
    has_next = start + len(chunk) < len(acc.users)
    pairs = list(request.args.items(multi=True))
    body = {
        "_total_items": len(acc.users),
        "_page": paging.page,
        "_page_count": math.ceil(len(acc.users) / paging.limit),
        "_links": page_links(
            common.origin(), request.path, pairs, paging.limit, paging.page, has_next
        ),
        "_embedded": {"users": [render.user(u, with_) for u in chunk]},
    }
    return errors.hal(body)


@bp.get("/api/v4/users/<int:uid>")
def user(uid: int) -> Response:
    denied = _require_admin()
    if denied:
        return denied
    found = common.account().user(uid)
    if found is None:
        return errors.no_content()
    return errors.hal(common.renderer().user(found, common.with_set(common.args())))


@bp.get("/api/v4/leads/pipelines")
def pipelines() -> Response:
    acc, render = common.account(), common.renderer()
    body = {
        "_total_items": len(acc.pipelines),
        "_links": link(f"{common.origin()}/api/v4/leads/pipelines"),
        "_embedded": {"pipelines": [render.pipeline(p) for p in acc.pipelines]},
    }
    return errors.hal(body)


@bp.get("/api/v4/leads/pipelines/<int:pid>")
def pipeline(pid: int) -> Response:
    found = common.account().pipeline(pid)
    if found is None:
        return errors.problem(404, "Pipeline not found")
    return errors.hal(common.renderer().pipeline(found))


@bp.get("/api/v4/leads/pipelines/<int:pid>/statuses")
def statuses(pid: int) -> Response:
    found = common.account().pipeline(pid)
    if found is None:
        return errors.problem(404, "Pipeline not found")
    render = common.renderer()
    body = {
        "_total_items": len(found.statuses),
        "_links": link(f"{common.origin()}/api/v4/leads/pipelines/{pid}/statuses"),
        "_embedded": {"statuses": [render.status(found, s) for s in found.statuses]},
    }
    return errors.hal(body)


@bp.get("/api/v4/leads/pipelines/<int:pid>/statuses/<int:sid>")
def status(pid: int, sid: int) -> Response:
    found = common.account().pipeline(pid)
    if found is None:
        return errors.problem(404, "Pipeline not found")
    item = found.status(sid)
    if item is None:
        return errors.problem(404, "Status not found")
    return errors.hal(common.renderer().status(found, item))


@bp.get("/api/v4/<any(leads,contacts,companies):kind>/custom_fields")
def custom_fields(kind: str) -> Response:
    sb, acc = common.sandbox(), common.account()
    values = common.args()
    paging = page_params(values, sb.config.default_limit, sb.config.max_limit, sb.config.over_limit)
    items = sorted(acc.fields.get(kind, []), key=lambda f: (f.sort, f.id))
    wanted = (
        values.get("filter", {}).get("type") if isinstance(values.get("filter"), dict) else None
    )
    if wanted:
        types = set(wanted.values()) if isinstance(wanted, dict) else {wanted}
        items = [f for f in items if f.type in types]
    start = (paging.page - 1) * paging.limit
    chunk = items[start : start + paging.limit]
    if not chunk:
        return errors.no_content()
    render = common.renderer()
    pairs = list(request.args.items(multi=True))
    has_next = start + len(chunk) < len(items)
    body = {
        "_total_items": len(items),
        "_page": paging.page,
        "_page_count": math.ceil(len(items) / paging.limit),
        "_links": page_links(
            common.origin(), request.path, pairs, paging.limit, paging.page, has_next
        ),
        "_embedded": {"custom_fields": [render.custom_field(f) for f in chunk]},
    }
    return errors.hal(body)


@bp.get("/api/v4/<any(leads,contacts,companies):kind>/custom_fields/<int:fid>")
def custom_field(kind: str, fid: int) -> Response:
    found = common.account().field_by_id(kind, fid)
    if found is None:
        return errors.no_content()
    return errors.hal(common.renderer().custom_field(found))
