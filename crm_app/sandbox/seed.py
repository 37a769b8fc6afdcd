"""Deterministic seeded accounts: users, pipelines, custom fields and realistic Russian data."""

from __future__ import annotations

import gc
import random
import uuid
from typing import Any

from crm_app.sandbox import names
from crm_app.sandbox.config import SandboxConfig
from crm_app.sandbox.store import (
    ACCOUNT_ID_BASE,
    LOST_STATUS,
    WON_STATUS,
    Account,
    CustomField,
    Enum,
    Pipeline,
    Record,
    Status,
    User,
)

HISTORY_DAYS = 730
PHONE_ENUMS = ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")
EMAIL_ENUMS = ("WORK", "PRIV", "OTHER")
LEAD_SOURCES = ("Сайт", "Telegram", "Звонок", "Рекомендация", "Выставка")


def account_subdomain(base: str, number: int) -> str:
    """demo, demo2, demo3, …"""
    return base if number == 1 else f"{base}{number}"


def build_accounts(config: SandboxConfig) -> list[Account]:
    """All accounts; the collector is paused while hundreds of thousands of records are made."""
    anchor = config.anchor()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return [build_account(config, n, anchor) for n in range(1, max(1, config.accounts) + 1)]
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()  # the seeded records live for the whole run: keep them out of GC passes


def build_account(config: SandboxConfig, number: int, anchor: int) -> Account:
    """One account; each entity type draws from its own seeded stream, so counts are independent."""
    account = Account(
        number=number,
        id=ACCOUNT_ID_BASE + number,
        subdomain=account_subdomain(config.subdomain, number),
        name="Демо-аккаунт" if number == 1 else f"Демо-аккаунт {number}",
        users=_users(config.seed, number, config.subdomain),
        pipelines=_pipelines(number),
        fields=_fields(number),
        created_at=anchor - HISTORY_DAYS * 86400 - 86400,
    )
    span = HISTORY_DAYS * 86400
    _seed_companies(
        account, config.company_count(), _rng(config, number, "companies"), anchor, span
    )
    _seed_contacts(account, config.contacts, _rng(config, number, "contacts"), anchor, span)
    _seed_leads(account, config.leads, _rng(config, number, "leads"), anchor, span)
    _seed_tasks(account, config.tasks, _rng(config, number, "tasks"), anchor, span)
    return account


def _rng(config: SandboxConfig, number: int, stream: str) -> random.Random:
    return random.Random(f"{config.seed}:{number}:{stream}")


def _users(seed: int, number: int, base: str) -> list[User]:
    rng = random.Random(f"{seed}:{number}:users")
    base_id = 8_000_000 + number * 100
    people = [
        (True, names.FEMALE_FIRST, True),
        (False, names.MALE_FIRST, False),
        (False, names.FEMALE_FIRST, True),
    ]
    users = []
    for k, (is_admin, pool, female) in enumerate(people, start=1):
        first = pool[int(rng.random() * len(pool))]
        last = names.SURNAMES[int(rng.random() * len(names.SURNAMES))]
        last = names.feminine(last) if female else last
        login = f"{names.translit(first)[0]}.{names.translit(last)}"
        users.append(
            User(
                id=base_id + k,
                name=f"{first} {last}",
                email=f"{login}@{account_subdomain(base, number)}.example.ru",
                is_admin=is_admin,
                phone=f"+7916{int(rng.random() * 1e7):07d}",
                uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
        )
    return users


def _pipelines(number: int) -> list[Pipeline]:
    def statuses(pid: int, stages: list[tuple[str, str]]) -> list[Status]:
        base = 60_000_000 + number * 1000 + (pid % 100) * 100
        items = [Status(base + 1, "Неразобранное", 10, "#c1c1c1", type=1, is_editable=False)]
        for k, (title, color) in enumerate(stages, start=2):
            items.append(Status(base + k, title, k * 10, color))
        items.append(Status(WON_STATUS, "Успешно реализовано", 10000, "#CCFF66", is_editable=False))
        items.append(
            Status(LOST_STATUS, "Закрыто и не реализовано", 11000, "#D5D8DB", is_editable=False)
        )
        return items

    main_id = 7_000_000 + number * 100 + 1
    second_id = main_id + 1
    return [
        Pipeline(
            main_id,
            "Основная воронка",
            1,
            True,
            statuses(
                main_id,
                [
                    ("Первичный контакт", "#99ccff"),
                    ("Переговоры", "#ffff99"),
                    ("Принимают решение", "#ffcc66"),
                    ("Согласование договора", "#ffcccc"),
                ],
            ),
        ),
        Pipeline(
            second_id,
            "Повторные продажи",
            2,
            False,
            statuses(
                second_id,
                [
                    ("Новый запрос", "#98cbff"),
                    ("Подготовка КП", "#fffeb2"),
                    ("Счёт выставлен", "#deff81"),
                ],
            ),
        ),
    ]


def _fields(number: int) -> dict[str, list[CustomField]]:
    fid = 500_000 + number * 1000
    eid = 1_000_000 + number * 1000
    counter = {"f": fid, "e": eid}

    def next_field() -> int:
        counter["f"] += 1
        return counter["f"]

    def enums(values: list[str], coded: bool) -> list[Enum]:
        out = []
        for k, value in enumerate(values, start=1):
            counter["e"] += 1
            out.append(Enum(counter["e"], value, k * 2, value if coded else None))
        return out

    def field(entity: str, name: str, kind: str, sort: int, **extra: Any) -> CustomField:
        return CustomField(next_field(), name, kind, entity, sort, **extra)

    def multitext(
        entity: str, name: str, code: str, values: tuple[str, ...], sort: int
    ) -> CustomField:
        # Predefined like amoCRM's own PHONE/EMAIL: enum values are the codes (WORK, MOB, …).
        return field(
            entity, name, "multitext", sort, code=code, is_predefined=True, is_deletable=False,
            enums=enums(list(values), coded=True),
        )  # fmt: skip

    predefined = {"is_predefined": True, "is_deletable": False}
    contacts = [
        multitext("contacts", "Телефон", "PHONE", PHONE_ENUMS, 4),
        multitext("contacts", "Email", "EMAIL", EMAIL_ENUMS, 6),
        field("contacts", "Должность", "text", 2, code="POSITION", **predefined),
        field("contacts", "Telegram ID", "text", 500, code="TELEGRAM_ID"),
        field("contacts", "Telegram username", "text", 501, code="TELEGRAM_USERNAME"),
    ]
    companies = [
        multitext("companies", "Телефон", "PHONE", PHONE_ENUMS, 4),
        multitext("companies", "Email", "EMAIL", EMAIL_ENUMS, 6),
        field("companies", "Web", "url", 8, code="WEB", **predefined),
        field("companies", "Адрес", "textarea", 10, code="ADDRESS", **predefined),
    ]
    leads = [
        field("leads", "Источник", "select", 500, enums=enums(list(LEAD_SOURCES), coded=False)),
        field("leads", "utm_source", "tracking_data", 510, code="UTM_SOURCE", is_predefined=True),
        field("leads", "Комментарий", "textarea", 520),
        field("leads", "Бюджет подтверждён", "checkbox", 530),
    ]
    return {"contacts": contacts, "companies": companies, "leads": leads}


def _times(rng: random.Random, i: int, n: int, anchor: int, span: int) -> tuple[int, int]:
    """created_at grows with the id (ids are handed out in time order); updated_at wanders later."""
    created = anchor - span + int((i + rng.random()) * span / max(n, 1))
    room = min(90 * 86400, anchor - created)
    updated = created + int(rng.random() ** 2 * room)
    return created, updated


def _seed_companies(account: Account, n: int, rng: random.Random, anchor: int, span: int) -> None:
    table = account.tables["companies"]
    phone, email, web, _address = account.fields["companies"]
    work_phone = (phone.enums or [])[0].id
    work_email = (email.enums or [])[0].id
    users = [u.id for u in account.users]
    r = rng.random
    for i in range(n):
        rid = table.new_id()
        created, updated = _times(rng, i, n, anchor, span)
        word = names.COMPANY_WORDS[int(r() * len(names.COMPANY_WORDS))]
        form = names.COMPANY_FORMS[int(r() * len(names.COMPANY_FORMS))]
        title = f"{form} «{word}»" + (f" {i // len(names.COMPANY_WORDS)}" if i >= 30 else "")
        site = names.translit(word).replace(" ", "")
        user = users[int(r() * len(users))]
        cf = (
            (phone.id, ((f"+7495{int(r() * 1e7):07d}", work_phone),)),
            (email.id, ((f"info@{site}{i}.ru", work_email),)),
            (web.id, ((f"https://{site}{i}.ru", None),)),
        )
        table.records[rid] = {
            "id": rid, "name": title, "responsible_user_id": user, "group_id": 0,
            "created_by": user, "updated_by": user, "created_at": created, "updated_at": updated,
            "closest_task_at": None, "cf": cf, "tags": (),
        }  # fmt: skip


def _seed_contacts(account: Account, n: int, rng: random.Random, anchor: int, span: int) -> None:
    table = account.tables["contacts"]
    phone, email, position, tg_id, tg_user = account.fields["contacts"]
    phone_enum = {e.code: e.id for e in phone.enums or ()}
    email_enum = {e.code: e.id for e in email.enums or ()}
    male, female = names.MALE_FIRST, names.FEMALE_FIRST
    surnames = names.SURNAMES
    fem_surnames = tuple(names.feminine(s) for s in surnames)
    lat_first = {x: names.translit(x) for x in male + female}
    lat_last = {x: names.translit(x) for x in surnames + fem_surnames}
    domains = names.EMAIL_DOMAINS
    users = [u.id for u in account.users]
    company_ids = list(account.tables["companies"].records)
    contact_tags = [account.tag_id("contacts", t) for t in ("VIP", "Telegram", "Сайт")]
    r = rng.random
    for i in range(n):
        rid = table.new_id()
        created, updated = _times(rng, i, n, anchor, span)
        is_female = r() < 0.5
        first = (female if is_female else male)[int(r() * 40)]
        k = int(r() * len(surnames))
        last = (fem_surnames if is_female else surnames)[k]
        if r() < 0.25:
            patronymic = names.PATRONYMICS[int(r() * len(names.PATRONYMICS))][1 if is_female else 0]
            full = f"{last} {first} {patronymic}"
        else:
            full = f"{first} {last}"
        values: list[tuple[int, tuple[tuple[str, int | None], ...]]] = []
        roll = r()
        if roll > 0.04:
            phones: tuple[tuple[str, int], ...] = (
                (f"+79{int(r() * 1e9):09d}", phone_enum["WORK" if r() < 0.6 else "MOB"]),
            )
            if roll > 0.85:
                phones += ((f"+79{int(r() * 1e9):09d}", phone_enum["MOB"]),)
            values.append((phone.id, phones))
        if r() < 0.8:
            local = f"{lat_first[first][0]}.{lat_last[last]}"
            if r() < 0.5:
                local += str(int(r() * 1000))
            mail = f"{local}@{domains[int(r() * len(domains))]}"
            values.append((email.id, ((mail, email_enum["WORK" if r() < 0.5 else "PRIV"]),)))
        if r() < 0.15:
            values.append((position.id, ((names.POSITIONS[int(r() * 6)], None),)))
        if r() < 0.3:
            values.append((tg_id.id, ((str(100_000_000 + int(r() * 7_000_000_000)), None),)))
            if r() < 0.6:
                handle = f"{lat_first[first]}_{lat_last[last][:6]}{int(r() * 100)}"
                values.append((tg_user.id, ((handle, None),)))
        user = users[int(r() * len(users))]
        company = company_ids[int(r() * len(company_ids))] if company_ids and r() < 0.3 else None
        tags = (contact_tags[int(r() * 3)],) if r() < 0.1 else ()
        table.records[rid] = {
            "id": rid, "name": full, "first_name": first, "last_name": last,
            "responsible_user_id": user, "group_id": 0, "created_by": user, "updated_by": user,
            "created_at": created, "updated_at": updated, "closest_task_at": None,
            "cf": tuple(values) or None, "tags": tags, "company_id": company,
        }  # fmt: skip


def _seed_leads(account: Account, n: int, rng: random.Random, anchor: int, span: int) -> None:
    table = account.tables["leads"]
    source, utm, _comment, confirmed = account.fields["leads"]
    source_enums = [(e.value, e.id) for e in source.enums or ()]
    contacts = account.tables["contacts"].records
    contact_ids = list(contacts)
    company_ids = list(account.tables["companies"].records)
    users = [u.id for u in account.users]
    main, second = account.pipelines
    lead_tags = [account.tag_id("leads", t) for t in names.TAGS]
    utm_values = ("yandex", "google", "telegram", "vk", "email")
    r = rng.random
    for i in range(n):
        rid = table.new_id()
        created, updated = _times(rng, i, n, anchor, span)
        pipeline = main if r() < 0.75 else second
        roll = r()
        if roll < 0.05:
            status = pipeline.statuses[0].id
        elif roll < 0.65:
            working = pipeline.statuses[1:-2]
            status = working[int(r() * len(working))].id
        else:
            status = WON_STATUS if roll < 0.85 else LOST_STATUS
        closed = updated if status in (WON_STATUS, LOST_STATUS) else None
        linked: tuple[tuple[int, bool], ...] = ()
        company = None
        if contact_ids and r() < 0.9:
            main_contact = contact_ids[int(r() * len(contact_ids))]
            linked = ((main_contact, True),)
            if r() < 0.15:
                other = contact_ids[int(r() * len(contact_ids))]
                if other != main_contact:
                    linked += ((other, False),)
            company = contacts[main_contact].get("company_id")
        if company is None and company_ids and r() < 0.1:
            company = company_ids[int(r() * len(company_ids))]
        values: list[tuple[int, tuple[tuple[object, int | None], ...]]] = []
        if r() < 0.6:
            value, enum_id = source_enums[int(r() * len(source_enums))]
            values.append((source.id, ((value, enum_id),)))
        if r() < 0.3:
            values.append((utm.id, ((utm_values[int(r() * 5)], None),)))
        if r() < 0.2:
            values.append((confirmed.id, ((True, None),)))
        topic = names.LEAD_TOPICS[int(r() * len(names.LEAD_TOPICS))]
        user = users[int(r() * len(users))]
        tags = (lead_tags[int(r() * len(lead_tags))],) if r() < 0.2 else ()
        table.records[rid] = {
            "id": rid, "name": f"{topic} №{i + 1}", "price": int(r() * 300) * 1000,
            "responsible_user_id": user, "group_id": 0, "status_id": status,
            "pipeline_id": pipeline.id, "loss_reason_id": None, "source_id": None,
            "created_by": user, "updated_by": user, "created_at": created, "updated_at": updated,
            "closed_at": closed, "closest_task_at": None, "is_deleted": False,
            "cf": tuple(values) or None, "score": None, "labor_cost": None, "tags": tags,
            "contacts": linked, "company_id": company,
        }  # fmt: skip
        for contact_id, _is_main in linked:
            account.link_contact(rid, contact_id)


def _seed_tasks(account: Account, n: int, rng: random.Random, anchor: int, span: int) -> None:
    table = account.tables["tasks"]
    lead_ids = list(account.tables["leads"].records)
    contact_ids = list(account.tables["contacts"].records)
    users = [u.id for u in account.users]
    r = rng.random
    for i in range(n):
        rid = table.new_id()
        created, updated = _times(rng, i, n, anchor, span)
        if lead_ids and (r() < 0.7 or not contact_ids):
            entity_type, entity_id = "leads", lead_ids[int(r() * len(lead_ids))]
        elif contact_ids:
            entity_type, entity_id = "contacts", contact_ids[int(r() * len(contact_ids))]
        else:
            entity_type, entity_id = None, None
        task_type = 1 if r() < 0.7 else 2
        due = created + 3600 * (1 + int(r() * 24 * 14))
        due -= due % 60
        done = due < anchor and r() < 0.7
        result = (
            names.TASK_RESULTS[int(r() * len(names.TASK_RESULTS))] if done and r() < 0.5 else None
        )
        user = users[int(r() * len(users))]
        table.records[rid] = {
            "id": rid, "created_by": user, "updated_by": user, "created_at": created,
            "updated_at": updated, "responsible_user_id": user, "group_id": 0,
            "entity_id": entity_id, "entity_type": entity_type,
            "duration": 3600 if task_type == 2 else 0, "is_completed": done,
            "task_type_id": task_type,
            "text": names.TASK_TEXTS[int(r() * len(names.TASK_TEXTS))], "result": result,
            "complete_till": due,
        }  # fmt: skip


def leads_record_defaults() -> Record:
    """Keys every lead record carries, for records created through the API."""
    return {
        "price": 0, "group_id": 0, "loss_reason_id": None, "source_id": None, "closed_at": None,
        "closest_task_at": None, "is_deleted": False, "cf": None, "score": None,
        "labor_cost": None, "tags": (), "contacts": (), "company_id": None,
    }  # fmt: skip
