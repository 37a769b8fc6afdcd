"""The bot's read API at scale: people lookup at 100 000 contacts, full-text search over
100 000 contacts + 50 000 deals + 200 000 notes, on PostgreSQL and on SQLite (the embedded
default). Requests go through the app (API key, validation, JSON) in-process; the figures are
per request, p50/p95 over a few hundred calls. `--quick` uses a tenth of the data.

Notes are 5-25 words drawn Zipf-like from ~4 000 words (a few very common ones, a long tail);
queries are a surname plus up to two words of that vocabulary.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.__main__ import Row
from benchmarks._support import bench_database

AREA = "people"
FIRST = ("Иван", "Пётр", "Анна", "Мария", "Олег", "Елена", "Сергей", "Ольга", "Дмитрий", "Наталья",
         "Алексей", "Татьяна", "Николай", "Ирина", "Андрей", "Светлана", "John", "Kate", "Maria")  # fmt: skip
LAST = ("Иванов", "Петров", "Сидоров", "Смирнов", "Кузнецов", "Попов", "Васильев", "Соколов",
        "Михайлов", "Новиков", "Фёдоров", "Морозов", "Волков", "Алексеев", "Лебедев", "Семёнов",
        "Егоров", "Павлов", "Козлов", "Степанов", "Smith", "Brown")  # fmt: skip
WORDS = ("заказ", "доставка", "оплата", "счёт", "договор", "возврат", "скидка", "кондиционер",
         "монтаж", "ремонт", "гарантия", "консультация", "звонок", "встреча", "офис", "склад",
         "самовывоз", "курьер", "Казань", "Москва", "Екатеринбург", "Новосибирск", "предоплата",
         "рассрочка", "коммерческое", "предложение", "поставка", "партия", "клиент", "менеджер",
         "order", "delivery", "invoice", "refund", "discount", "contract", "warranty")  # fmt: skip


SYLLABLES = ("ка", "ло", "ми", "ра", "ст", "но", "ве", "ту", "пре", "ди", "зо", "ль", "ны", "ар",
             "ом", "ки", "ре", "ва", "го", "са")  # fmt: skip


def _vocabulary() -> list[str]:
    """A realistic spread of words: the common ones above, then 4 000 rarer ones. Notes draw
    words Zipf-like (a few very frequent, a long tail), as real CRM notes do."""
    rng = random.Random(3)
    extra: list[str] = []
    while len(extra) < 4000:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randrange(2, 5)))
        if word not in extra:
            extra.append(word)
    return [*WORDS, *extra]


VOCABULARY = _vocabulary()
_WEIGHTS = [1.0 / (rank + 1) for rank in range(len(VOCABULARY))]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCABULARY, weights=_WEIGHTS, k=n))


def _fill(owner_id: int, contacts: int, leads: int, notes: int) -> None:
    from crm_app.extensions import db
    from crm_app.models import Contact, Lead, Note

    rng = random.Random(7)
    now = datetime.now(UTC)
    chunk = 5000

    def put(model: Any, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), chunk):
            db.session.execute(model.__table__.insert(), rows[start : start + chunk])
        db.session.commit()

    put(Contact, [
        {"owner_id": owner_id, "id": 10_000_000 + i,
         "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "phone": f"+7916{i:07d}",
         "phones": [f"+7916{i:07d}"], "email": f"client{i}@example.ru",
         "emails": [f"client{i}@example.ru"], "telegram_id": str(500_000_000 + i),
         "updated_at": 1_760_000_000 + i, "raw": {}, "synced_at": now}
        for i in range(contacts)
    ])  # fmt: skip
    put(Lead, [
        {"owner_id": owner_id, "id": 20_000_000 + i,
         "name": f"{rng.choice(WORDS).capitalize()} {rng.choice(LAST)}а: {_sentence(rng, 2)}",
         "price": rng.randrange(0, 500_000), "pipeline_id": 1, "status_id": rng.choice((11, 12, 142)),
         "main_contact_id": 10_000_000 + (i * 2) % contacts,
         "contact_ids": [10_000_000 + (i * 2) % contacts], "updated_at": 1_760_000_000 + i,
         "raw": {}, "synced_at": now}
        for i in range(leads)
    ])  # fmt: skip
    put(Note, [
        {"owner_id": owner_id, "id": 30_000_000 + i, "entity_type": "leads",
         "entity_id": 20_000_000 + i % leads, "note_type": "common",
         "text": f"{rng.choice(FIRST)} {_sentence(rng, rng.randrange(5, 25))}",
         "params": {}, "created_at": 1_760_000_000 + i, "updated_at": 1_760_000_000 + i,
         "synced_at": now}
        for i in range(notes)
    ])  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure(app: Any, key: str, contacts: int, calls: int) -> tuple[list[float], list[float]]:
    rng = random.Random(11)
    headers = {"Authorization": f"Bearer {key}"}
    client = app.test_client()
    lookups: list[float] = []
    for n in range(calls):
        i = rng.randrange(contacts)
        params = [{"phone": f"8 916 {i:07d}"}, {"telegram_id": str(500_000_000 + i)},
                  {"email": f"CLIENT{i}@example.ru"}][n % 3]  # fmt: skip
        started = time.perf_counter()
        resp = client.get("/api/crm/people", query_string=params, headers=headers)
        lookups.append((time.perf_counter() - started) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"lookup answered {resp.status_code}: {resp.get_data()[:200]!r}")
    searches: list[float] = []
    for _ in range(calls):
        # What a bot asks: a surname and a word or two of the conversation.
        words = [rng.choice(LAST), *rng.sample(VOCABULARY, rng.randrange(0, 3))]
        started = time.perf_counter()
        resp = client.get("/api/crm/search", query_string={"q": " ".join(words)}, headers=headers)
        searches.append((time.perf_counter() - started) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"search answered {resp.status_code}: {resp.get_data()[:200]!r}")
    return lookups, searches


def _one(
    backend: str, url: str, instance: str, sizes: tuple[int, int, int], calls: int
) -> list[Row]:
    from cryptography.fernet import Fernet

    from crm_app import create_app
    from crm_app.commands.users import get_or_create_owner
    from crm_app.extensions import db
    from crm_app.services.inbound import create_api_key

    app = create_app({
        "SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": instance, "SECRET_KEY": "b" * 40,
        "CRM_ENCRYPTION_KEY": Fernet.generate_key().decode(), "REDIS_URL": None,
        "RATELIMIT_STORAGE_URI": "memory://", "CRM_READ_RATE_LIMIT": "1000000 per minute",
    })  # fmt: skip
    contacts, leads, notes = sizes
    with app.app_context():
        db.create_all()
        owner_id = get_or_create_owner("bench").id
        key, _row = create_api_key(owner_id, "bench")
        started = time.monotonic()
        _fill(owner_id, contacts, leads, notes)
        if backend == "PostgreSQL":
            with db.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
        print(f"   people/{backend}: filled in {time.monotonic() - started:.0f} s", file=sys.stderr)
        _measure(app, key, contacts, 20)  # warm caches and connections
        lookups, searches = _measure(app, key, contacts, calls)
        db.session.remove()
        db.engine.dispose()
    size = f"{contacts // 1000}k contacts"
    corpus = f"{contacts // 1000}k contacts + {leads // 1000}k deals + {notes // 1000}k notes"
    lp95, sp95 = _pct(lookups, 0.95), _pct(searches, 0.95)
    return [
        Row(AREA, f"people lookup at {size}, {backend}: p50 / p95 ({calls} calls)",
            f"{statistics.median(lookups):.1f} / {lp95:.1f} ms", "p95 ≤ 20 ms", lp95 <= 20),
        Row(AREA, f"search over {corpus}, {backend}: p50 / p95 ({calls} queries)",
            f"{statistics.median(searches):.1f} / {sp95:.1f} ms", "p95 ≤ 100 ms", sp95 <= 100),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    sizes = (10_000, 5_000, 20_000) if quick else (100_000, 50_000, 200_000)
    calls = 100 if quick else 300
    rows: list[Row] = []
    with bench_database("people") as url, tempfile.TemporaryDirectory() as instance:
        rows += _one("PostgreSQL", url, instance, sizes, calls)
    with tempfile.TemporaryDirectory() as instance:
        rows += _one("SQLite", f"sqlite:///{instance}/crm.sqlite3", instance, sizes, calls)
    return rows
