"""Inbound benchmark: amoCRM requests per new and per known person; 50 identical requests at once.

Runs on this machine: PostgreSQL database ``crm_bench_inbound_<pid>`` (created and dropped),
Redis db 14 (only a private queue and our own keys), an in-process amoCRM sandbox seeded with a
realistic account, the app in-process (requests go through ``POST /api/crm/inbound`` with an API
key) and a real Celery worker. The owner's mirror is filled by a real full sync first, as in
production; the one-time custom-field lookup is reported on its own row. Requests are counted in
the sandbox's request log. Sandbox and client run at 25 rps here: the figures are request counts,
not rates, and 7 rps would only make the run slower.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.__main__ import Row
from benchmarks._support import app_config, bench_database, celery_worker, settings

AREA = "inbound"
RATE = 25
# The sandbox enforces a little above our pace: this benchmark counts requests per person, and a
# 429 from scheduling jitter on a busy 2-core machine (the sync benchmark measures 429s) would
# only add a rejected-and-retried request to the count.
SANDBOX_RATE = 30
REPEAT_SHARE = 0.3
CONCURRENT_COPIES = 50


def _connect(app: Any, server: Any) -> tuple[int, str]:
    """An owner connected to the sandbox by a real code exchange; returns (owner id, API key)."""
    from crm_app.commands.users import create_user
    from crm_app.services.inbound import create_api_key
    from testkit.sandbox_link import connect_owner_to_sandbox

    user = create_user("bench-admin", "bench-password", "admin", "bench")
    pipeline = server.account.main_pipeline
    connect_owner_to_sandbox(
        user.owner_id,
        server,
        auto_create_lead=True,
        lead_pipeline_id=pipeline.id,
        lead_status_id=pipeline.first_status().id,
    )
    plain, _row = create_api_key(user.owner_id, "bench")
    return user.owner_id, plain


def _sync_mirror(owner_id: int) -> None:
    from crm_app.services.sync.engine import run_sync
    from crm_app.services.sync.runs import start_sync

    run = start_sync(owner_id, entities=["contacts", "leads"], full=True, enqueue=False)
    run_sync(run.id)


def _post_all(app: Any, key: str, bodies: list[dict[str, Any]]) -> list[str]:
    def one(body: dict[str, Any]) -> str:
        with app.test_client() as client:
            resp = client.post(
                "/api/crm/inbound", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            if resp.status_code != 202:
                raise RuntimeError(
                    f"inbound answered {resp.status_code}: {resp.get_data()[:200]!r}"
                )
            return str(resp.json["id"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, bodies))


def _wait(ids: list[str], timeout: float) -> dict[str, int]:
    from sqlalchemy import func, select

    from crm_app.extensions import db
    from crm_app.models import InboundRequest

    deadline = time.monotonic() + timeout
    while True:
        db.session.rollback()
        counts = dict(
            db.session.execute(
                select(InboundRequest.status, func.count())
                .where(InboundRequest.public_id.in_(ids))
                .group_by(InboundRequest.status)
            ).all()
        )
        if not counts.get("queued") and sum(counts.values()) == len(ids):
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"inbound requests still queued after {timeout:.0f} s: {counts}")
        time.sleep(0.5)


def _api_count(server: Any, since: int) -> int:
    entries = server.requests_log(kind="api", since=since)
    # Say what the calls were, so a figure above target can be traced to its cause.
    kinds = Counter(
        f"{e['method']} {e['path'].split('?')[0].rstrip('0123456789/')} {e['status']}"
        for e in entries
    )
    print(f"   inbound: api calls since {since}: {dict(kinds)}", file=sys.stderr, flush=True)
    return len(entries)


def _mark(server: Any) -> int:
    entries = server.requests_log()
    return int(entries[-1]["seq"]) if entries else 0


def _person(i: int) -> dict[str, Any]:
    # Half Telegram, half widget; phones and e-mails far from the seeded data's ranges.
    if i % 2:
        return {"channel": "telegram", "external_id": str(8_800_000_000 + i),
                "name": f"Клиент {i}", "username": f"client_{i}", "message": f"Здравствуйте #{i}"}  # fmt: skip
    return {"channel": "widget", "external_id": f"visitor-{i}", "name": f"Посетитель {i}",
            "phone": f"+7999{i:07d}", "email": f"visitor{i}@bench.example.org",
            "message": f"Заявка с сайта #{i}", "utm": {"utm_source": "bench", "utm_campaign": "q"},
            "page_url": "https://shop.example.ru/form"}  # fmt: skip


def run(quick: bool) -> list[Row]:
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.sandbox.server import SandboxServer
    from crm_app.services.amo import client_for_owner
    from crm_app.services.inbound.fields import get_field_map

    total = 200 if quick else 1000
    repeats = int(total * REPEAT_SHARE)
    fresh = total - repeats
    seeded = (300, 200) if quick else (2000, 1000)
    queue = f"crm-bench-inbound-{os.getpid()}"
    rows: list[Row] = []
    server = SandboxServer(
        port=0, contacts=seeded[0], leads=seeded[1], tasks=0, rate_limit=SANDBOX_RATE, quiet=True
    ).start()
    try:
        with bench_database("inbound") as db_url, tempfile.TemporaryDirectory() as instance:
            env = dict(os.environ) | settings(db_url, instance, queue, server.url, rate=RATE)
            app = create_app(app_config(env, INBOUND_RATE_LIMIT="100000 per minute"))
            with app.app_context():
                db.create_all()
                owner_id, key = _connect(app, server)
                _sync_mirror(owner_id)
                mark = _mark(server)
                get_field_map(owner_id, lambda: client_for_owner(owner_id))
                lookup = _api_count(server, mark)
                with celery_worker(env, queue, instance, name="bench-inbound", concurrency=4):
                    rows.extend(_measure(app, server, key, fresh, repeats))
                db.session.remove()
                db.engine.dispose()
            rows.append(
                Row(
                    AREA,
                    "one-time custom-field lookup (per owner, cached 6 h)",
                    f"{lookup} requests",
                    "≤ 2",
                    lookup <= 2,
                )
            )
    finally:
        server.stop()
    return rows


def _measure(app: Any, server: Any, key: str, fresh: int, repeats: int) -> list[Row]:
    acc = server.account
    rng = random.Random(20240601)
    people = [_person(i) for i in range(1, fresh + 1)]

    mark = _mark(server)
    started = time.monotonic()
    counts_new = _wait(_post_all(app, key, people), timeout=fresh * 2 + 60)
    new_calls = _api_count(server, mark)
    elapsed_new = time.monotonic() - started

    again = [dict(rng.choice(people), message=f"Ещё вопрос {n}") for n in range(repeats)]
    mark = _mark(server)
    counts_rep = _wait(_post_all(app, key, again), timeout=repeats * 2 + 60)
    known_calls = _api_count(server, mark)

    with acc.lock:
        contacts_before, leads_before = (
            len(acc.tables["contacts"].records),
            len(acc.tables["leads"].records),
        )
    copy = {"channel": "widget", "external_id": "one-visitor", "name": "Одна заявка",
            "email": "same@bench.example.org", "message": "Перезвоните"}  # fmt: skip
    counts_copies = _wait(_post_all(app, key, [copy] * CONCURRENT_COPIES), timeout=120)
    with acc.lock:
        new_contacts = len(acc.tables["contacts"].records) - contacts_before
        new_leads = len(acc.tables["leads"].records) - leads_before

    per_new = new_calls / fresh
    per_known = known_calls / repeats if repeats else 0.0
    failed = counts_new.get("failed", 0) + counts_rep.get("failed", 0)
    return [
        Row(AREA, f"amoCRM requests per new person ({fresh} people)", f"{per_new:.2f}",
            "≤ 2", per_new <= 2 and not counts_new.get("failed")),
        Row(AREA, f"amoCRM requests per known person ({repeats} repeats)", f"{per_known:.2f}",
            "≤ 1", per_known <= 1 and not counts_rep.get("failed")),
        Row(AREA, f"{CONCURRENT_COPIES} identical requests at once → contacts / deals",
            f"{new_contacts} / {new_leads}", "1 / 1",
            new_contacts == 1 and new_leads == 1 and counts_copies.get("created") == CONCURRENT_COPIES),
        Row(AREA, "inbound requests failed", str(failed), "0", failed == 0),
        Row(AREA, f"new people processed per second (API at {RATE} rps)",
            f"{fresh / elapsed_new:.1f}", "info", True),
    ]  # fmt: skip
