"""Campaign-scale first contacts: a burst of 2 000 new people against the sandbox at amoCRM's real
7 requests/second, a lone person at idle, 2 000 messages from 500 known people, and one human
sent 50 times plus on three channels inside one window.

Same set-up as ``benchmarks/inbound.py`` (PostgreSQL, Redis, in-process sandbox and app, a real
Celery worker, a mirror filled by a real sync), except that the sandbox and the client both run
at 7 rps. People are posted through ``POST /api/crm/inbound`` by 16 threads as fast as the app
takes them. Latency is the request's ``created_at`` → ``processed_at`` (intake to "created").
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.__main__ import Row
from benchmarks._support import app_config, bench_database, celery_worker, settings
from benchmarks.inbound import _api_count, _connect, _mark, _post_all, _sync_mirror

AREA = "batch"
RATE = 7


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _wait_all(ids: list[str], timeout: float) -> list[Any]:
    from sqlalchemy import select

    from crm_app.extensions import db
    from crm_app.models import InboundRequest

    deadline = time.monotonic() + timeout
    while True:
        db.session.rollback()
        rows = list(
            db.session.scalars(select(InboundRequest).where(InboundRequest.public_id.in_(ids)))
        )
        if len(rows) == len(ids) and all(r.status != "queued" for r in rows):
            return rows
        if time.monotonic() > deadline:
            left = sum(1 for r in rows if r.status == "queued")
            raise RuntimeError(f"{left} of {len(ids)} requests still queued after {timeout:.0f} s")
        time.sleep(0.05)


def _latencies(rows: list[Any]) -> list[float]:
    return [(r.processed_at - r.created_at).total_seconds() for r in rows if r.processed_at]


def _person(i: int) -> dict[str, Any]:
    if i % 2:
        return {"channel": "telegram", "external_id": str(7_700_000_000 + i), "name": f"Подписчик {i}",
                "message": f"Хочу участвовать #{i}"}  # fmt: skip
    return {"channel": "widget", "external_id": f"lead-{i}", "name": f"Гость {i}",
            "phone": f"+7995{i:07d}", "email": f"guest{i}@campaign.example.org",
            "message": f"Заявка по акции #{i}", "utm": {"utm_source": "ads"}}  # fmt: skip


def _counts(server: Any) -> tuple[int, int]:
    acc = server.account
    with acc.lock:
        return len(acc.tables["contacts"].records), len(acc.tables["leads"].records)


def _burst(app: Any, server: Any, key: str, total: int) -> tuple[list[Row], list[dict[str, Any]]]:
    people = [_person(i) for i in range(1, total + 1)]
    contacts0, leads0 = _counts(server)
    mark = _mark(server)
    started = time.monotonic()
    ids = _post_all(app, key, people)
    posted = time.monotonic() - started
    rows = _wait_all(ids, timeout=total + 120)
    elapsed = max(r.processed_at for r in rows) - min(r.created_at for r in rows)
    calls = _api_count(server, mark)
    contacts1, leads1 = _counts(server)
    created = sum(1 for r in rows if r.status == "created")
    failed = sum(1 for r in rows if r.status == "failed")
    duplicated = (leads1 - leads0) - created
    lat = _latencies(rows)
    rate = total / elapsed.total_seconds()
    per = calls / total
    print(f"   batch: posted {total} in {posted:.1f} s", file=sys.stderr, flush=True)
    return [
        Row(AREA, f"burst of {total} new people at {RATE} rps: created / failed / duplicated",
            f"{created} / {failed} / {duplicated} (contacts +{contacts1 - contacts0})",
            f"{total} / 0 / 0", created == total and failed == 0 and duplicated == 0
            and contacts1 - contacts0 == total),
        Row(AREA, "  amoCRM requests per new person", f"{per:.3f} ({calls} requests)", "≤ 0.05",
            per <= 0.05),
        Row(AREA, "  new people per second, first intake → last created", f"{rate:.0f}",
            "≥ 120", rate >= 120),
        Row(AREA, "  intake → created, p50 / p95", f"{statistics.median(lat):.1f} / "
            f"{_pct(lat, 0.95):.1f} s", "info", True),
    ], people  # fmt: skip


def _lone(app: Any, key: str, n: int) -> Row:
    lat = []
    for i in range(n):
        ids = _post_all(app, key, [_person(900_000 + i)])
        (row,) = _wait_all(ids, timeout=60)
        lat.extend(_latencies([row]))
        time.sleep(0.3)
    p95 = _pct(lat, 0.95)
    return Row(AREA, f"lone new person at idle: intake → created p50 / p95 ({n} people)",
               f"{statistics.median(lat):.2f} / {p95:.2f} s", "p95 ≤ 1.0 s", p95 <= 1.0)  # fmt: skip


def _known(app: Any, server: Any, key: str, people: list[dict[str, Any]], total: int) -> Row:
    known = people[: max(1, total // 4)]
    messages = [dict(known[n % len(known)], message=f"Сообщение {n}") for n in range(total)]
    mark = _mark(server)
    rows = _wait_all(_post_all(app, key, messages), timeout=total + 120)
    calls = _api_count(server, mark)
    ok = all(r.status == "created" for r in rows)
    per = calls / total
    return Row(AREA, f"{total} messages from {len(known)} known people: requests per message",
               f"{per:.3f} ({calls} requests)", "≤ 0.05", per <= 0.05 and ok)  # fmt: skip


def _one_window(app: Any, server: Any, key: str) -> Row:
    contacts0, leads0 = _counts(server)
    copy = {"channel": "widget", "external_id": "promo-1", "name": "Одна заявка",
            "email": "once@campaign.example.org", "message": "Перезвоните"}  # fmt: skip
    channels = [
        {"channel": "telegram", "external_id": "42424242", "name": "Вера", "phone": "+79057770042",
         "message": "Из бота"},
        {"channel": "widget", "external_id": "vera-site", "phone": "8 905 777-00-42",
         "email": "vera@campaign.example.org", "message": "С сайта"},
        {"channel": "widget", "external_id": "vera-form", "email": "Vera@Campaign.example.org",
         "message": "Из формы"},
    ]  # fmt: skip
    rows = _wait_all(_post_all(app, key, [copy] * 50 + channels), timeout=120)
    contacts1, leads1 = _counts(server)
    ok = all(r.status == "created" for r in rows)
    return Row(AREA, "50 identical + one person on 3 channels, one window → contacts / deals",
               f"{contacts1 - contacts0} / {leads1 - leads0}", "2 / 2",
               ok and (contacts1 - contacts0, leads1 - leads0) == (2, 2))  # fmt: skip


def run(quick: bool) -> list[Row]:
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.sandbox.server import SandboxServer
    from crm_app.services.inbound.fields import load_field_map

    total = 300 if quick else 2000
    known_total = 400 if quick else 2000
    queue = f"crm-bench-batch-{os.getpid()}"
    rows: list[Row] = []
    server = SandboxServer(port=0, contacts=300, leads=200, tasks=0, rate_limit=RATE,
                           quiet=True).start()  # fmt: skip
    try:
        with bench_database("batch") as db_url, tempfile.TemporaryDirectory() as instance:
            env = dict(os.environ) | settings(db_url, instance, queue, server.url, rate=RATE)
            app = create_app(app_config(env, INBOUND_RATE_LIMIT="1000000 per minute"))
            with app.app_context():
                db.create_all()
                owner_id, key = _connect(app, server)
                _sync_mirror(owner_id)
                load_field_map(owner_id)  # what connecting does
                with celery_worker(env, queue, instance, name="bench-inbound", concurrency=2):
                    burst, people = _burst(app, server, key, total)
                    rows += burst
                    time.sleep(2)
                    rows.append(_lone(app, key, 10 if quick else 20))
                    rows.append(_known(app, server, key, people, known_total))
                    rows.append(_one_window(app, server, key))
                db.session.remove()
                db.engine.dispose()
    finally:
        server.stop()
    return rows
