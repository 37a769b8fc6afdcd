"""Workspace benchmark: board and table read times, a drag's amoCRM requests, the outbox drain.

Runs on this machine: PostgreSQL database ``crm_bench_workspace_<pid>`` (created and dropped),
Redis db 14 (a private queue, our own keys), an in-process amoCRM sandbox at amoCRM's 7 rps, the
app in-process and a real Celery worker for the outbox.

* Board: 20 000 deals in one pipeline's stages and 100 000 deals for the table search are put
  straight into the mirror (a sync of them is the sync benchmark's subject); the read models'
  server time is measured (p95 of repeated calls).
* Drag: a stage change through the write service, then amoCRM's webhooks (the sandbox's real
  bodies, posted to our endpoint) processed: requests counted in the sandbox's log.
* Outbox: 500 edits of 50 deals made while amoCRM answers 503, then healed; the time from the
  heal until every edit is applied, and whether each deal got its edits once and in order.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from benchmarks.__main__ import Row
from benchmarks._support import app_config, bench_database, celery_worker, settings

AREA = "workspace"
RATE = 7
UNREACHABLE = "http://127.0.0.1:9/hook"
WORDS = ("окна", "двери", "кровля", "ремонт", "поставка", "монтаж", "аренда", "сервис", "склад")


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


def _timed(fn: Callable[[], Any], runs: int) -> float:
    from crm_app.extensions import db

    samples = []
    for _ in range(runs):
        db.session.expire_all()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
        db.session.rollback()
    return _p95(samples)


def _fill_board(owner_id: int, pipeline_id: int, statuses: list[int], count: int) -> None:
    from crm_app.extensions import db
    from crm_app.models import Lead

    rng = random.Random(7)
    base = 900_000_000
    now = int(time.time())
    rows: list[dict[str, Any]] = [
        {
            "owner_id": owner_id, "id": base + i, "name": f"Сделка {rng.choice(WORDS)} {i}",
            "price": rng.randrange(0, 500_000), "pipeline_id": pipeline_id,
            "status_id": statuses[i % len(statuses)], "responsible_user_id": None,
            "created_at": now - rng.randrange(0, 86400 * 365), "updated_at": now - rng.randrange(0, 86400 * 90),
            "raw": {}, "contact_ids": [], "synced_at": datetime.now(UTC),
        }
        for i in range(count)
    ]  # fmt: skip
    for start in range(0, len(rows), 5000):
        db.session.execute(Lead.__table__.insert(), rows[start : start + 5000])
    db.session.commit()
    # As autovacuum leaves a table in steady use: statistics, visibility map, GIN lists merged.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE crm_leads"))


def _relay(app: Any, server: Any, token: str, after: int) -> int:
    """Post the webhook bodies the sandbox produced since `after` to our endpoint."""
    newest = after
    with app.test_client() as client:
        for delivery in server.deliveries():
            if delivery["id"] <= after or delivery["attempt"] != 1:
                continue
            client.post(
                f"/webhooks/amocrm/{token}", data=delivery["body"].encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            newest = max(newest, delivery["id"])
    return newest


def run(quick: bool) -> list[Row]:
    from crm_app import create_app
    from crm_app.extensions import db
    from crm_app.sandbox.server import SandboxServer

    queue = f"crm-bench-workspace-{os.getpid()}"
    server = SandboxServer(
        port=0, contacts=200, leads=120, tasks=20, rate_limit=RATE, quiet=True
    ).start()
    rows: list[Row] = []
    try:
        with bench_database("workspace") as db_url, tempfile.TemporaryDirectory() as instance:
            env = dict(os.environ) | settings(db_url, instance, queue, server.url, rate=RATE)
            app = create_app(app_config(env))
            with app.app_context():
                db.create_all()
                owner_id = _connect(server)
                rows.extend(_reads(app, owner_id, quick))
                rows.extend(_drag(app, server, owner_id))
                with celery_worker(env, queue, instance, name="bench-workspace"):
                    rows.extend(_outbox(server, owner_id, 100 if quick else 500))
                db.session.remove()
                db.engine.dispose()
    finally:
        server.stop()
    return rows


def _connect(server: Any) -> int:
    from crm_app.commands.users import create_user
    from crm_app.services.sync import run_sync, start_sync
    from testkit.sandbox_link import connect_owner_to_sandbox

    owner_id = create_user("bench-admin", "bench-password", "admin", "bench").owner_id
    connect_owner_to_sandbox(owner_id, server)
    run_sync(start_sync(owner_id, full=True, enqueue=False).id)
    return int(owner_id)


def _reads(app: Any, owner_id: int, quick: bool) -> list[Row]:
    from crm_app.commands.users import get_or_create_owner
    from crm_app.extensions import db
    from crm_app.models import Pipeline, PipelineStatus
    from crm_app.services.workspace.board import DealFilter, board, board_column, deals_table

    pipeline = db.session.scalar(
        __import__("sqlalchemy")
        .select(Pipeline)
        .where(Pipeline.owner_id == owner_id, Pipeline.is_main.is_(True))
    )
    statuses = [
        s.id for s in db.session.scalars(
            select(PipelineStatus).where(
                PipelineStatus.owner_id == owner_id, PipelineStatus.pipeline_id == pipeline.id
            ).order_by(PipelineStatus.sort)
        )
    ][:8]  # fmt: skip
    board_deals = 20_000
    _fill_board(owner_id, pipeline.id, statuses, board_deals)
    first = _timed(lambda: board(owner_id, pipeline.id), 10 if quick else 30)
    view = board(owner_id, pipeline.id)
    assert view is not None
    column = max(view.columns, key=lambda c: c.count)
    cursor = column.next_cursor

    def next_page() -> None:
        nonlocal cursor
        page = board_column(owner_id, pipeline.id, column.status.id, after=cursor, totals=False)
        cursor = page.next_cursor if page is not None and page.next_cursor else column.next_cursor

    page_ms = _timed(next_page, 20 if quick else 50)
    html_ms = _board_html(app, pipeline.id, 10 if quick else 30)
    # The table: 100 000 deals of another owner, searched by a word of their names.
    big = int(get_or_create_owner("bench-big").id)
    for p in (pipeline,):
        db.session.merge(Pipeline(owner_id=big, id=p.id, name=p.name, is_main=True))
    db.session.commit()
    _fill_board(big, pipeline.id, statuses, 20_000 if quick else 100_000)
    search = _timed(
        lambda: deals_table(big, DealFilter(q="кровля", per_page=50)), 10 if quick else 20
    )
    filtered = _timed(
        lambda: deals_table(
            big, DealFilter(pipeline_id=pipeline.id, status_ids=(statuses[1],), state="open")
        ),
        10 if quick else 20,
    )
    size = "20 000" if quick else "100 000"
    return [
        Row(AREA, f"board first paint, {board_deals:,} deals, {len(statuses)} stages (p95)".replace(",", " "),
            f"{first:.0f} ms", "≤ 150 ms", first <= 150),
        Row(AREA, "board column next page (p95)", f"{page_ms:.1f} ms", "≤ 50 ms", page_ms <= 50),
        Row(AREA, "board page as HTML: view + read model + template (p95)", f"{html_ms:.0f} ms", "≤ 150 ms", html_ms <= 150),
        Row(AREA, f"deals table search over {size} deals (p95)", f"{search:.0f} ms", "≤ 100 ms", search <= 100),
        Row(AREA, f"deals table stage filter over {size} deals (p95)", f"{filtered:.0f} ms", "≤ 100 ms", filtered <= 100),
    ]  # fmt: skip


def _board_html(app: Any, pipeline_id: int, runs: int) -> float:
    """The board fragment a browser's poll or section switch gets: the view, both read models
    and the template, in a request of the owner's admin (no HTTP server around it)."""
    from flask_login import login_user
    from sqlalchemy import select as _select

    from crm_app.extensions import db
    from crm_app.models import User

    user = db.session.scalar(_select(User).where(User.username == "bench-admin"))
    view = app.view_functions["workspace.deals_board"]

    def render() -> None:
        url = f"/admin/crm/deals?pipeline_id={pipeline_id}"
        with app.test_request_context(url, headers={"HX-Request": "true"}):
            login_user(user)
            resp = view()
            assert resp.status_code == 200, resp.status_code

    return _timed(render, runs)


def _drag(app: Any, server: Any, owner_id: int) -> list[Row]:
    from sqlalchemy import select

    from crm_app.extensions import db
    from crm_app.models import Lead, PipelineStatus
    from crm_app.services.amo import client_for_owner
    from crm_app.services.webhooks import ensure_webhook_token
    from crm_app.services.webhooks.apply import process_owner
    from crm_app.services.workspace import Applied, update_lead

    token = ensure_webhook_token(owner_id)
    with client_for_owner(owner_id) as api:
        api.subscribe_webhook(UNREACHABLE, ["update_lead", "status_lead"])
    drags = 20
    ids = sorted(server.account.tables["leads"].records)[:drags]
    server.clear_requests()
    relayed = 0
    applied = 0
    for lead_id in ids:
        lead = db.session.get(Lead, (owner_id, lead_id))
        assert lead is not None, lead_id
        target = db.session.scalar(
            select(PipelineStatus.id).where(
                PipelineStatus.owner_id == owner_id, PipelineStatus.pipeline_id == lead.pipeline_id,
                PipelineStatus.type == 0, PipelineStatus.id.not_in([lead.status_id, 142, 143]),
            ).limit(1)
        )  # fmt: skip
        if isinstance(
            update_lead(owner_id, lead_id, {"status_id": target}, lead.updated_at), Applied
        ):
            applied += 1
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and sum(1 for d in server.deliveries() if d["attempt"] == 1) < drags
    ):
        time.sleep(0.05)
    relayed = _relay(app, server, token, relayed)
    process_owner(owner_id)
    log = server.requests_log(kind="api")
    writes = sum(1 for e in log if e["method"] == "PATCH")
    reads = sum(1 for e in log if e["method"] == "GET")
    print(
        f"   workspace: drags {drags}, applied {applied}, PATCH {writes}, GET {reads}",
        file=sys.stderr,
    )
    return [
        Row(AREA, "drag → stage in amoCRM: requests per drag", f"{writes / drags:.2f}", "= 1",
            applied == drags and writes == drags),
        Row(AREA, "drag: re-reads after the webhook echo", str(reads), "0", reads == 0),
    ]  # fmt: skip


def _outbox(server: Any, owner_id: int, edits: int) -> list[Row]:
    import requests
    from sqlalchemy import func, select

    from crm_app.extensions import db
    from crm_app.models import Lead, OutboxStatus, OutboxWrite
    from crm_app.services.workspace import Pending, update_lead

    deals = sorted(server.account.tables["leads"].records)[20 : 20 + max(10, edits // 10)]
    requests.post(
        f"{server.url}/_sandbox/faults",
        json={"status": 503, "count": 10**6, "method": "PATCH"},
        timeout=5,
    )
    made: dict[int, list[int]] = defaultdict(list)
    queued = 0
    for n in range(edits):
        lead_id = deals[n % len(deals)]
        db.session.expire_all()
        stored = db.session.get(Lead, (owner_id, lead_id))
        assert stored is not None, lead_id
        seen = stored.updated_at
        price = 100_000 + n
        if isinstance(update_lead(owner_id, lead_id, {"price": price}, seen), Pending):
            queued += 1
        made[lead_id].append(price)
    server.clear_requests()
    healed = time.monotonic()
    requests.delete(f"{server.url}/_sandbox/faults", timeout=5)
    budget = edits / RATE * 1.1
    open_rows = edits
    while time.monotonic() - healed < budget * 2 and open_rows:
        db.session.rollback()
        open_rows = (
            db.session.scalar(
                select(func.count())
                .select_from(OutboxWrite)
                .where(OutboxWrite.status == OutboxStatus.PENDING)
            )
            or 0
        )
        time.sleep(0.1)
    took = time.monotonic() - healed
    applied = (
        db.session.scalar(
            select(func.count())
            .select_from(OutboxWrite)
            .where(OutboxWrite.status == OutboxStatus.APPLIED)
        )
        or 0
    )
    seen_prices: dict[int, list[int]] = defaultdict(list)
    requests_sent = 0
    for entry in server.requests_log(kind="api", method="PATCH"):
        if entry["status"] != 200:
            continue
        requests_sent += 1
        body = entry["json"]
        items = (
            body
            if isinstance(body, list)
            else [dict(body, id=int(entry["path"].rsplit("/", 1)[1]))]
        )
        for item in items:
            seen_prices[int(item["id"])].append(int(item["price"]))
    in_order = dict(seen_prices) == dict(made)
    lost = sum(len(v) for v in made.values()) - sum(len(v) for v in seen_prices.values())
    duplicated = sum(max(0, len(seen_prices[k]) - len(set(seen_prices[k]))) for k in seen_prices)
    final_ok = all(server.account.tables["leads"].get(k)["price"] == v[-1] for k, v in made.items())
    print(f"   workspace: outbox {edits} edits, queued {queued}, applied {applied}, "
          f"{requests_sent} PATCH requests, {took:.1f} s", file=sys.stderr)  # fmt: skip
    return [
        Row(AREA, f"outbox: {edits} edits made during a 503 outage, applied after healing",
            f"{applied}/{edits} in {took:.1f} s", f"all, ≤ {budget:.0f} s",
            applied == edits and took <= budget),
        Row(AREA, "outbox: in order per deal, lost, duplicated",
            f"{'in order' if in_order else 'OUT OF ORDER'}, {max(lost, 0)} lost, {duplicated} dup",
            "in order, 0, 0", in_order and lost == 0 and duplicated == 0 and final_ok),
    ]  # fmt: skip
