"""The CRM workspace pages: the deals board and table, deal and contact cards, contacts, tasks.

Every write goes through `crm_app.services.workspace` (version check, one amoCRM request,
outbox) and answers with the re-rendered piece: the board after a move, the card after an
edit. Open boards and cards poll with an ETag and get an empty 304 while nothing changed.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
)
from flask_babel import gettext as _
from flask_login import current_user

from crm_app.auth.access import page_login_required
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.services import workspace
from crm_app.services.amo import NotConfigured
from crm_app.services.workspace import (
    Applied,
    Conflict,
    Invalid,
    Outcome,
    Pending,
    cards,
    live,
    people,
)
from crm_app.services.workspace import board as boards
from crm_app.web.context import request_context
from crm_app.web.errors import refuse
from crm_app.web.respond import respond, wants_fragment

bp = Blueprint("workspace", __name__)

ID = "int(min=1, max=9223372036854775807)"
MAX_TEXT = 4000
MAX_TZ_OFFSET = 16 * 60  # the widest real offsets are -12:00 and +14:00
MAX_SHOWN = 2000  # characters of `shown`: a hundred stages fit


# -- reading the request --------------------------------------------------------------------


def _int(name: str, source: Any = None) -> int | None:
    raw = (source if source is not None else request.values).get(name, "")
    raw = str(raw).strip()
    if not raw:
        return None
    if not raw.lstrip("-").isdigit() or len(raw) > 18:
        refuse(400, _n("Поле %(f)s должно быть числом."), f=name)
    return int(raw)


def _day(name: str, end: bool = False) -> int | None:
    """A yyyy-mm-dd date field as unix seconds (its first or last second, UTC)."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        refuse(400, _n("Дата %(f)s: нужен формат ГГГГ-ММ-ДД."), f=name)
    return int(day.timestamp()) + (86399 if end else 0)


def _moment(raw: str, offset: str = "") -> int | None:
    """A datetime-local field as unix seconds.

    The field holds the person's wall-clock time; crm.js sends the browser's offset from UTC at
    that moment (minutes, as JavaScript's getTimezoneOffset: UTC = local + offset). Without it
    (no JavaScript) the time is taken as UTC, as the form then says.
    """
    try:
        moment = datetime.fromisoformat(raw.strip()).replace(tzinfo=UTC)
    except ValueError:
        return None
    minutes = offset.strip()
    if minutes.lstrip("-").isdigit() and abs(int(minutes)) <= MAX_TZ_OFFSET:
        moment += timedelta(minutes=int(minutes))
    return int(moment.timestamp())


def _text(name: str) -> str:
    return (request.form.get(name) or "").strip()[:MAX_TEXT]


def _user_id() -> int | None:
    return int(current_user.id) if current_user.is_authenticated else None


def _poll(etag: str) -> Response | None:
    """304 for a poll that already shows this version (crm.js sends the ETag it last saw)."""
    if wants_fragment() and etag in request.if_none_match:
        resp = make_response("", 304)
        resp.set_etag(etag)
        return resp
    return None


def _tagged(resp: Response, etag: str) -> Response:
    resp.set_etag(etag)
    return resp


# -- the sections' pages --------------------------------------------------------------------


def _page(section: str, template: str, title: str, **vm: Any) -> str:
    ctx = request_context()
    return render_template(
        "workspace/page.html",
        ctx=ctx,
        section=section,
        body=template,
        title=title,
        pending=cards.pending_count(ctx.owner_id),
        **vm,
    )


def _section(section: str, template: str, title: str, status: int = 200, **vm: Any) -> Response:
    """A section's piece for htmx, the workspace page around it otherwise."""
    return respond(
        template, status=status, page=lambda: _page(section, template, title, **vm), **vm
    )


def _per_column() -> int:
    return max(1, int(current_app.config.get("WORKSPACE_BOARD_PAGE", 20)))


def _shown() -> dict[int, int] | None:
    """The cards each column has on screen, `shown=<stage>:<count>,…` (workspace.js sends it
    with a board's poll and a move): the answer renders as many, so loaded pages stay."""
    raw = str(request.values.get("shown", "")).strip()
    if not raw:
        return None
    parts = raw.split(",")
    shown: dict[int, int] = {}
    for part in parts if len(raw) <= MAX_SHOWN else ["-"]:
        stage, sep, count = part.strip().partition(":")
        if not (sep and stage.isdigit() and count.isdigit() and len(stage) <= 18):
            abort(400, description=_("Параметр shown: нужен вид «этап:число,этап:число»."))
        # The service caps the counts; a long number here is only clamped.
        shown[int(stage)] = int(count) if len(count) <= 9 else boards.MAX_PER_COLUMN
    return shown


def _board_vm(pipeline_id: int | None, shown: dict[int, int] | None = None) -> dict[str, Any]:
    ctx = request_context()
    return {
        "board": boards.board(ctx.owner_id, pipeline_id, per_column=_per_column(), shown=shown),
        "choices": cards.choices(ctx.owner_id),
    }


@bp.get("/admin/crm/deals")
@page_login_required
def deals_board() -> Response:
    ctx = request_context()
    pipeline_id = _int("pipeline_id")
    shown = _shown()  # checked before the 304: a malformed value is a 400 either way
    chosen = pipeline_id or next(iter(p.id for p in boards.pipelines(ctx.owner_id)), 0)
    etag = boards.board_version(ctx.owner_id, chosen)
    if hit := _poll(etag):
        return hit
    vm = _board_vm(pipeline_id, shown)
    return _tagged(_section("deals", "workspace/_board.html", _("Сделки"), **vm), etag)


@bp.get(f"/admin/crm/deals/column/<{ID}:pipeline_id>/<{ID}:status_id>")
@page_login_required
def board_column(pipeline_id: int, status_id: int) -> Response:
    ctx = request_context()
    column = boards.board_column(
        ctx.owner_id,
        pipeline_id,
        status_id,
        after=request.args.get("after", "")[:200] or None,
        limit=_per_column(),
        totals=False,
    )
    if column is None:
        refuse(404, _n("Такого этапа нет."))
    return respond(
        "workspace/_cards.html",
        column=column,
        pipeline_id=pipeline_id,
        choices=cards.choices(ctx.owner_id),
    )


def _deal_filter() -> boards.DealFilter:
    args = request.args
    state = args.get("state") if args.get("state") in ("open", "closed") else None
    return boards.DealFilter(
        q=args.get("q", "")[:100],
        pipeline_id=_int("pipeline_id", args),
        status_ids=tuple(int(s) for s in args.getlist("status_id") if s.isdigit() and len(s) <= 18),
        responsible_user_id=_int("responsible_user_id", args),
        created_from=_day("created_from"),
        created_to=_day("created_to", end=True),
        updated_from=_day("updated_from"),
        updated_to=_day("updated_to", end=True),
        state=state,
        sort=str(args.get("sort")) if args.get("sort") in boards.SORTS else "updated_at",
        desc=args.get("dir") != "asc",
        page=max(1, min(_int("page", args) or 1, 100000)),
    )


def _linker(endpoint: str) -> Any:
    """`link(page=2)`: this page's URL with its current filters and one of them changed."""

    def link(**change: Any) -> str:
        args: dict[str, Any] = {k: v for k, v in request.args.lists() if k != "owner_id"}
        args.update(change)
        return request_context().url(endpoint, **args)

    return link


def _stage_groups(choices: cards.Choices) -> list[tuple[str, list[boards.StatusChoice]]]:
    """The stage filter's checkboxes: each pipeline's own stages, then won and lost once (142
    and 143 are the same two stages in every pipeline)."""
    groups = [(p.name, [s for s in p.statuses if not s.closed]) for p in choices.pipelines]
    closed: dict[int, boards.StatusChoice] = {}
    for p in choices.pipelines:
        for s in p.statuses:
            if s.closed:
                closed.setdefault(s.id, s)
    if closed:
        groups.append((_("Во всех воронках"), sorted(closed.values(), key=lambda s: s.id)))
    return [(name, stages) for name, stages in groups if stages]


@bp.get("/admin/crm/deals/table")
@page_login_required
def deals_table() -> Response:
    ctx = request_context()
    table = boards.deals_table(ctx.owner_id, _deal_filter())
    choices = cards.choices(ctx.owner_id)
    groups = _stage_groups(choices)
    return _section(
        "deals",
        "workspace/_table.html",
        _("Сделки"),
        table=table,
        args=request.args,
        link=_linker("workspace.deals_table"),
        choices=choices,
        status_names={s.id: s.name for p in choices.pipelines for s in p.statuses},
        stage_groups=groups,
        picked_statuses=[
            s.name for _name, stages in groups for s in stages if s.id in table.filters.status_ids
        ],
    )


@bp.get("/admin/crm/people")
@page_login_required
def contacts() -> Response:
    ctx = request_context()
    args = request.args
    table = people.contacts_table(
        ctx.owner_id,
        q=args.get("q", "")[:100],
        responsible_user_id=_int("responsible_user_id", args),
        sort=args.get("sort", "updated_at"),
        desc=args.get("dir") != "asc",
        page=max(1, min(_int("page", args) or 1, 100000)),
    )
    return _section(
        "contacts",
        "workspace/_contacts.html",
        _("Контакты"),
        table=table,
        args=args,
        link=_linker("workspace.contacts"),
        choices=cards.choices(ctx.owner_id),
    )


def _tasks_vm() -> dict[str, Any]:
    ctx = request_context()
    who = "all" if request.values.get("who") == "all" else "me"
    me = people.me(ctx.owner_id)
    page = cards.task_list(
        ctx.owner_id,
        responsible_user_id=me if who == "me" else None,
        page=max(1, min(_int("page", request.args) or 1, 100000)),
    )
    return {"tasks": page, "who": who, "me": me, "link_tasks": _linker("workspace.tasks")}


@bp.get("/admin/crm/agenda")
@page_login_required
def tasks() -> Response:
    ctx = request_context()
    etag = live.tasks_version(ctx.owner_id) + request.query_string.decode()[:200]
    if hit := _poll(etag):
        return hit
    return _tagged(_section("tasks", "workspace/_tasks.html", _("Задачи"), **_tasks_vm()), etag)


# -- cards ----------------------------------------------------------------------------------


# entity type → (template, read model, URL endpoint and its id argument, section, not found)
CARDS: dict[str, tuple[str, Any, str, str, str, str]] = {
    "leads": (
        "workspace/_deal.html", cards.deal_card, "workspace.deal", "lead_id", "deals",
        _n("Такой сделки нет."),
    ),
    "contacts": (
        "workspace/_contact.html", cards.contact_card, "workspace.contact", "contact_id",
        "contacts", _n("Такого контакта нет."),
    ),
}  # fmt: skip


def _notes_link(entity_type: str, entity_id: int) -> Any:
    """`notes_link(before, part=None)`: the card's URL on the timeline page before that note."""
    ctx = request_context()
    endpoint, arg = CARDS[entity_type][2], CARDS[entity_type][3]

    def link(before: int, **more: Any) -> str:
        return ctx.url(endpoint, **{arg: entity_id}, notes_before=before, **more)

    return link


def _card_vm(entity_type: str, entity_id: int, **extra: Any) -> dict[str, Any]:
    ctx = request_context()
    _template, read, endpoint, arg, _section_name, missing = CARDS[entity_type]
    # A card read (GET) may page its timeline: `notes_before` is the "older notes" link's,
    # `notes_to` a live refresh's (the oldest note on screen, sent by workspace.js).
    before = _int("notes_before", request.args) if request.method == "GET" else None
    down_to = _int("notes_to", request.args) if request.method == "GET" else None
    view = read(ctx.owner_id, entity_id, notes_before=before, notes_down_to=down_to)
    if view is None:
        refuse(404, missing)
    live = {"part": "live", **({"notes_before": before} if before else {})}
    return {
        "view": view,
        "kind": entity_type,
        "entity_id": entity_id,
        "choices": cards.choices(ctx.owner_id),
        "errors": {},
        "card_url": ctx.url(endpoint, **{arg: entity_id}),
        "live_url": ctx.url(endpoint, **{arg: entity_id}, **live),
        "notes_before": before,
        "notes_link": _notes_link(entity_type, entity_id),
        **extra,
    }


def _older_notes(entity_type: str, entity_id: int) -> Response:
    """The timeline's next page for htmx: its notes and the link to the page after."""
    ctx = request_context()
    if not cards.exists(ctx.owner_id, entity_type, entity_id):
        abort(404, description=_t(CARDS[entity_type][5]))
    page = cards.note_page(
        ctx.owner_id, entity_type, entity_id, before=_int("notes_before", request.args)
    )
    return respond(
        "workspace/_notes.html",
        notes=page.items,
        older=page.older,
        notes_link=_notes_link(entity_type, entity_id),
    )


def _card(entity_type: str, entity_id: int, status: int = 200, **extra: Any) -> Response:
    """The card of a deal or contact: the piece for htmx, on the workspace page otherwise."""
    template, section = CARDS[entity_type][0], CARDS[entity_type][4]
    vm = _card_vm(entity_type, entity_id, **extra)
    title = vm["view"].deal.name if entity_type == "leads" else vm["view"].name
    message = vm.pop("message", None)
    category = vm.pop("category", "success")
    return respond(
        template,
        status=status,
        page=lambda: _page(section, template, title, **vm),
        message=message,
        category=category,
        **vm,
    )


def _live_card(entity_type: str, entity_id: int) -> Response:
    ctx = request_context()
    if request.args.get("part") == "notes" and wants_fragment():
        return _older_notes(entity_type, entity_id)
    etag = live.entity_version(ctx.owner_id, entity_type, entity_id)
    if hit := _poll(etag):
        return hit
    if request.args.get("part") == "live" and wants_fragment():
        vm = _card_vm(entity_type, entity_id)
        return _tagged(respond("workspace/_live.html", **vm), etag)
    return _tagged(_card(entity_type, entity_id), etag)


@bp.get(f"/admin/crm/deals/<{ID}:lead_id>")
@page_login_required
def deal(lead_id: int) -> Response:
    return _live_card("leads", lead_id)


@bp.get(f"/admin/crm/people/<{ID}:contact_id>")
@page_login_required
def contact(contact_id: int) -> Response:
    return _live_card("contacts", contact_id)


# -- what a write came to -------------------------------------------------------------------


def _result(entity_type: str, entity_id: int, outcome: Outcome, form: str) -> Response:
    """The card after a write: applied, pending, a conflict (409, both versions) or a refusal
    (422, amoCRM's message next to the field it names)."""
    if isinstance(outcome, Applied):
        return _card(entity_type, entity_id, message=_("Сохранено в amoCRM."))
    if isinstance(outcome, Pending):
        return _card(
            entity_type,
            entity_id,
            message=_("amoCRM сейчас недоступен: правка ждёт отправки и будет применена."),
            category="error",
        )
    if isinstance(outcome, Conflict) and form == "complete":
        message = _("Задачу изменили в amoCRM: показано, как она выглядит сейчас.")
        return _card(entity_type, entity_id, status=409, message=message, category="error")
    if isinstance(outcome, Conflict):
        conflict = {"form": form, "theirs": outcome.theirs, "yours": outcome.yours}
        return _card(entity_type, entity_id, status=409, conflict=conflict)
    if isinstance(outcome, Invalid):
        return _refused(entity_type, entity_id, form, outcome.fields)
    refuse(404, _n("Такой записи нет."))


def _refused(entity_type: str, entity_id: int, form: str, fields: dict[str, str]) -> Response:
    """422: the card with each message next to its field and `form` filled with what was typed."""
    errors = {f"{form}.{k}": v for k, v in fields.items()}
    return _card(
        entity_type,
        entity_id,
        status=422,
        errors=errors,
        form_values=request.form.to_dict(),
        typed=form,
    )


def _safely(run: Any) -> Outcome:
    try:
        outcome: Outcome = run()
    except NotConfigured:
        refuse(409, _n("amoCRM не подключён: подключите аккаунт в разделе «Интеграция»."))
    return outcome


def _changed(current: dict[str, Any], fields: tuple[str, ...], numbers: tuple[str, ...]) -> dict:
    """The fields the person changed: the form's value against the value they saw (`was_<name>`,
    rendered with the form), or against the card's when the form does not say (a re-apply).
    Only those are sent, so a field someone else changed meanwhile is not written back."""
    changes: dict[str, Any] = {}
    for name in fields:
        if name not in request.form:
            continue
        value: Any = _int(name, request.form) if name in numbers else _text(name)
        if value is None and name in numbers:
            continue
        was_key = f"was_{name}"
        if was_key in request.form:
            was: Any = _int(was_key, request.form) if name in numbers else _text(was_key)
        else:
            was = current.get(name)
        if value != was:
            changes[name] = value
    return changes


# -- deal writes ----------------------------------------------------------------------------


@bp.post(f"/admin/crm/deals/<{ID}:lead_id>/edit")
@page_login_required
def deal_edit(lead_id: int) -> Response:
    ctx = request_context(write=True)
    view = cards.deal_card(ctx.owner_id, lead_id)
    if view is None:
        refuse(404, _n("Такой сделки нет."))
    d = view.deal
    current = {
        "name": d.name,
        "price": d.price,
        "responsible_user_id": d.responsible_user_id,
        "status_id": d.status_id,
        "loss_reason_id": view.loss_reason_id,
    }
    numbers = ("price", "responsible_user_id", "status_id", "loss_reason_id")
    changes = _changed(current, ("name", *numbers), numbers)
    if not changes:
        return _card("leads", lead_id, message=_("Изменений нет."))
    seen = _int("updated_at", request.form)
    outcome = _safely(
        lambda: workspace.update_lead(ctx.owner_id, lead_id, changes, seen, user_id=_user_id())
    )
    return _result("leads", lead_id, outcome, "edit")


def _needs_reason(status_id: int | None, reason: int | None, reasons: list[Any]) -> bool:
    return status_id == 143 and reason is None and bool(reasons)


@bp.post(f"/admin/crm/deals/<{ID}:lead_id>/move")
@page_login_required
def deal_move(lead_id: int) -> Response:
    """A drag or the "move to" menu: the status changes with one PATCH; the board comes back."""
    ctx = request_context(write=True)
    status_id = _int("status_id", request.form)
    reason = _int("loss_reason_id", request.form)
    pipeline_id = _int("pipeline_id", request.form)
    shown = _shown()
    vm = _board_vm(pipeline_id, shown)
    if status_id is None:
        refuse(400, _n("Выберите этап."))
    if _needs_reason(status_id, reason, vm["choices"].loss_reasons):
        view = cards.deal_card(ctx.owner_id, lead_id)
        if view is None:
            refuse(404, _n("Такой сделки нет."))
        return respond(
            "workspace/_board.html", status=422, ask_reason=view.deal, ask_status=status_id, **vm
        )
    view = cards.deal_card(ctx.owner_id, lead_id)
    if view is not None and view.deal.status_id == status_id and reason is None:
        # The menu opens on the card's own stage: pressing "move" unchanged is not a change.
        return respond("workspace/_board.html", message=_("Сделка уже на этом этапе."), **vm)
    changes: dict[str, Any] = {"status_id": status_id}
    if reason is not None:
        changes["loss_reason_id"] = reason
    seen = _int("updated_at", request.form)
    outcome = _safely(
        lambda: workspace.update_lead(ctx.owner_id, lead_id, changes, seen, user_id=_user_id())
    )
    message, category, status = _("Этап изменён в amoCRM."), "success", 200
    if isinstance(outcome, Pending):
        message, category = _("amoCRM недоступен: перенос ждёт отправки."), "error"
    elif isinstance(outcome, Conflict):
        message, category, status = (
            _("Сделку только что изменили в amoCRM: доска обновлена, перенесите ещё раз."),
            "error",
            409,
        )
    elif isinstance(outcome, Invalid):
        message = "; ".join(outcome.fields.values()) or outcome.detail
        category, status = "error", 422
    elif not isinstance(outcome, Applied):
        refuse(404, _n("Такой сделки нет."))
    vm = _board_vm(pipeline_id, shown)  # after the write: the card is in its new column
    return respond("workspace/_board.html", status=status, message=message, category=category, **vm)


@bp.post("/admin/crm/deals/new")
@page_login_required
def deal_create() -> Response:
    ctx = request_context(write=True)
    name = _text("name")
    if not name:
        refuse(400, _n("Укажите название сделки."))
    contact_id = _int("contact_id", request.form)
    contact = None
    if contact_id is None and (_text("contact_name") or _text("phone") or _text("email")):
        contact = {"name": _text("contact_name"), "phone": _text("phone"), "email": _text("email")}
    outcome = _safely(
        lambda: workspace.create_lead(
            ctx.owner_id,
            name=name,
            price=_int("price", request.form),
            status_id=_int("status_id", request.form),
            responsible_user_id=_int("responsible_user_id", request.form),
            contact_id=contact_id,
            contact=contact,
            user_id=_user_id(),
        )
    )
    if isinstance(outcome, Applied):
        target = ctx.url("workspace.deal", lead_id=outcome.entity_id)
        if wants_fragment():
            resp = make_response("", 204)
            resp.headers["HX-Location"] = target
            return resp
        return _redirect(target)
    if isinstance(outcome, Pending):
        return _redirect_with(
            _("amoCRM недоступен: сделка будет создана, как только он ответит."), "error"
        )
    if isinstance(outcome, Invalid):
        detail = "; ".join(str(v) for v in outcome.fields.values()) or outcome.detail
        refuse(422, _n("amoCRM не принял сделку: %(e)s"), e=detail)
    abort(404)


def _redirect(target: str) -> Response:
    resp = make_response(redirect(target, code=303))
    return resp


def _redirect_with(message: str, category: str) -> Response:
    flash(message, category)
    target = request_context().url("workspace.deals_board")
    if wants_fragment():
        resp = make_response("", 204)
        resp.headers["HX-Location"] = target
        return resp
    return _redirect(target)


@bp.post(f"/admin/crm/deals/<{ID}:entity_id>/notes", defaults={"entity_type": "leads"})
@bp.post(f"/admin/crm/people/<{ID}:entity_id>/notes", defaults={"entity_type": "contacts"})
@page_login_required
def note_add(entity_type: str, entity_id: int) -> Response:
    ctx = request_context(write=True)
    text = _text("text")
    outcome = _safely(
        lambda: workspace.add_note(ctx.owner_id, entity_type, entity_id, text, user_id=_user_id())
    )
    return _result(entity_type, entity_id, outcome, "note")


@bp.post(f"/admin/crm/deals/<{ID}:entity_id>/tasks", defaults={"entity_type": "leads"})
@bp.post(f"/admin/crm/people/<{ID}:entity_id>/tasks", defaults={"entity_type": "contacts"})
@page_login_required
def task_add(entity_type: str, entity_id: int) -> Response:
    ctx = request_context(write=True)
    due = _moment(request.form.get("complete_till", ""), request.form.get("tz_offset", ""))
    text = _text("text")
    if due is None or not text:
        field = "complete_till" if due is None else "text"
        return _refused(entity_type, entity_id, "task", {field: _("Заполните поле.")})
    outcome = _safely(
        lambda: workspace.create_task(
            ctx.owner_id,
            text=text,
            complete_till=due,
            entity_type=entity_type,
            entity_id=entity_id,
            task_type_id=_int("task_type_id", request.form),
            responsible_user_id=_int("responsible_user_id", request.form),
            user_id=_user_id(),
        )
    )
    return _result(entity_type, entity_id, outcome, "task")


@bp.post(f"/admin/crm/agenda/<{ID}:task_id>/complete")
@page_login_required
def task_complete(task_id: int) -> Response:
    """Complete a task with a result; the card it was done from (or the list) comes back."""
    ctx = request_context(write=True)
    changes = {"is_completed": True, "result": _text("result") or None}
    seen = _int("updated_at", request.form)
    outcome = _safely(
        lambda: workspace.update_task(ctx.owner_id, task_id, changes, seen, user_id=_user_id())
    )
    entity_type = request.form.get("from")
    entity_id = _int("entity_id", request.form)
    if entity_type in CARDS and entity_id:
        return _result(entity_type, entity_id, outcome, "complete")
    message, category, status = _("Задача выполнена."), "success", 200
    if isinstance(outcome, Pending):
        message, category = _("amoCRM недоступен: отметка ждёт отправки."), "error"
    elif isinstance(outcome, Conflict):
        message, category, status = _("Задачу изменили в amoCRM: список обновлён."), "error", 409
    elif isinstance(outcome, Invalid):
        message, category, status = outcome.detail, "error", 422
    elif not isinstance(outcome, Applied):
        refuse(404, _n("Такой задачи нет."))
    return respond(
        "workspace/_tasks.html", status=status, message=message, category=category, **_tasks_vm()
    )


# -- contact writes -------------------------------------------------------------------------


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _lines(name: str) -> list[str]:
    raw = request.form.get(name, "")
    return [v.strip() for v in raw.replace(",", "\n").splitlines() if v.strip()][:20]


@bp.post(f"/admin/crm/people/<{ID}:contact_id>/edit")
@page_login_required
def contact_edit(contact_id: int) -> Response:
    ctx = request_context(write=True)
    view = cards.contact_card(ctx.owner_id, contact_id)
    if view is None:
        refuse(404, _n("Такого контакта нет."))
    # Compared with what the person saw (`was_*`), so a field changed meanwhile is not resent.
    changes: dict[str, Any] = {}
    was_name = _text("was_name") if "was_name" in request.form else view.name
    if (name := _text("name")) and name != was_name:
        changes["name"] = name
    for field in ("phones", "emails"):
        was = _lines(f"was_{field}") if f"was_{field}" in request.form else getattr(view, field)
        if field in request.form and _lines(field) != was:
            changes[field] = _lines(field)
    if not changes:
        return _card("contacts", contact_id, message=_("Изменений нет."))
    # amoCRM drops a malformed e-mail without a word: say so, and keep what was typed.
    bad = [v for v in changes.get("emails", []) if not _EMAIL_RE.match(v)]
    if bad:
        errors = {"edit.emails": _("Это не похоже на адрес e-mail: %(v)s", v=", ".join(bad))}
        form_values = request.form.to_dict()
        return _card("contacts", contact_id, status=422, errors=errors, form_values=form_values)
    seen = _int("updated_at", request.form)
    outcome = _safely(
        lambda: workspace.update_contact(
            ctx.owner_id, contact_id, changes, seen, user_id=_user_id()
        )
    )
    return _result("contacts", contact_id, outcome, "edit")


# -- edits that settled as conflicts in the outbox -------------------------------------------


@bp.post(f"/admin/crm/outbox/<{ID}:outbox_id>/<any(reapply, dismiss):action>")
@page_login_required
def outbox_action(outbox_id: int, action: str) -> Response:
    """Mine on top of theirs (a fresh write on the current version), or drop mine."""
    ctx = request_context(write=True)
    entity_type = request.form.get("entity_type", "")
    entity_id = _int("entity_id", request.form)
    if entity_type not in CARDS or entity_id is None:
        refuse(400, _n("Не указано, к чему относится правка."))
    if action == "dismiss":
        if not cards.dismiss(ctx.owner_id, outbox_id):
            refuse(404, _n("Такой правки нет."))
        return _card(entity_type, entity_id, message=_("Ваша правка отброшена."))
    outcome = _safely(lambda: cards.reapply(ctx.owner_id, outbox_id, user_id=_user_id()))
    return _result(entity_type, entity_id, outcome, "edit")


# -- template helpers -----------------------------------------------------------------------

NOTE_TYPES = {
    "common": _n("Текст"),
    "call_in": _n("Входящий звонок"),
    "call_out": _n("Исходящий звонок"),
    "service_message": _n("Системное"),
    "extended_service_message": _n("Системное"),
    "sms_in": _n("Входящее SMS"),
    "sms_out": _n("Исходящее SMS"),
    "attachment": _n("Файл"),
    "geolocation": _n("Геолокация"),
    "message_cashier": _n("Кассир"),
}
FIELD_LABELS = {
    "name": _n("Название"),
    "price": _n("Бюджет"),
    "status_id": _n("Этап"),
    "pipeline_id": _n("Воронка"),
    "responsible_user_id": _n("Ответственный"),
    "loss_reason_id": _n("Причина отказа"),
    "phones": _n("Телефоны"),
    "emails": _n("E-mail"),
    "text": _n("Текст"),
    "is_completed": _n("Выполнена"),
    "result": _n("Результат"),
}


def _note_text(note: Any) -> str:
    """A note's text, or what its params say (a call's phone and duration, a service text)."""
    if note.text:
        return str(note.text)
    params = note.params or {}
    if "phone" in params:
        return _(
            "%(phone)s · звонок %(n)s с", phone=params.get("phone"), n=params.get("duration", 0)
        )
    return str(params.get("text") or params.get("service") or "")


def _outbox_summary(values: dict[str, Any], only: dict[str, Any] | None = None) -> str:
    """`field: value` pairs of an outbox payload (or of their version, limited to my fields)."""
    keys = [k for k in (only or values) if k in FIELD_LABELS]
    if only is None and "params" in values:
        return str((values.get("params") or {}).get("text") or "")
    return ", ".join(f"{_t(FIELD_LABELS[k])}: {values.get(k)}" for k in keys)


@bp.app_template_filter("unix_iso")
def _unix_iso(stamp: Any) -> str:
    return datetime.fromtimestamp(int(stamp), UTC).isoformat() if stamp else ""


@bp.app_template_filter("age_days")
def _age_days(stamp: Any) -> int:
    return max(0, (int(time.time()) - int(stamp)) // 86400) if stamp else 0


@bp.app_template_filter("note_text")
def _note_text_filter(note: Any) -> str:
    return _note_text(note)


@bp.app_template_filter("outbox_summary")
def _outbox_summary_filter(values: Any, only: Any = None) -> str:
    return _outbox_summary(dict(values or {}), dict(only) if only else None)


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    return {
        "note_types": {k: _t(v) for k, v in NOTE_TYPES.items()},
        "field_labels": {k: _t(v) for k, v in FIELD_LABELS.items()},
    }
