"""run_sync: execute one SyncRun, entity by entity, page by page, checkpointing every page."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import Connection, func, select

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMBlocked,
    AmoCRMRateLimited,
)
from crm_app.amocrm.throttle import pace_interval
from crm_app.extensions import db
from crm_app.models import RunStatus
from crm_app.services.amo import (
    NotConfigured,
    client_for_owner,
    record_api_failure,
    record_api_success,
    sync_retry_policy,
)
from crm_app.services.sync.checkpoint import Checkpoint, EntityProgress, Mode
from crm_app.services.sync.mappers import map_items
from crm_app.services.sync.paging import (
    PAGE_LIMIT,
    PageStream,
    SpacedThrottle,
    parallel_pages,
    prefetch,
)
from crm_app.services.sync.reference import sync_reference_data
from crm_app.services.sync.refetch import refetch_entities
from crm_app.services.sync.runs import (
    LeaseLost,
    RunLease,
    claim_run,
    heartbeat_interval,
    read_cursor,
    run_connection,
    save_cursor,
    utcnow,
    write_log,
)
from crm_app.services.sync.upsert import ENTITIES, entity_scope, entity_table, upsert_rows
from crm_app.services.tokens import NotConnected

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


class RequestCounter:
    """Counts every HTTP answer the client receives (retries included) and the 429s among them."""

    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.latency = 0.0  # moving average of seconds from sending to the answer
        self._lock = threading.Lock()  # several fetch threads answer at once

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        elapsed = getattr(response, "elapsed", None)
        seconds = elapsed.total_seconds() if elapsed is not None else 0.0
        with self._lock:
            self.requests += 1
            if getattr(response, "status_code", None) == 429:
                self.rate_limited += 1
            self.latency = seconds if self.requests == 1 else 0.8 * self.latency + 0.2 * seconds
        return response

    def in_flight_for(self, rate: float, page_seconds: float) -> int:
        """Requests in flight that keep the pipeline fed (Little's law, 25 % spare).

        Pages are needed every ``max(1 / rate, page_seconds)`` seconds: the throttle's spacing,
        or the time the run takes to store a page if that is longer. With answers faster than
        that, one request in flight is enough (and nothing is fetched past the end).
        """
        spacing = 1.0 / rate if rate > 0 else 0.0
        cadence = max(spacing, page_seconds, 1e-3)
        needed = max(1, math.ceil(self.latency / cadence * 1.25))
        if spacing > page_seconds:
            # Throttle-bound: a second request in flight costs no CPU and keeps the throttle's
            # slots used when one answer is slow (a missed slot is lost for good).
            needed = max(needed, 2)
        return needed

    def attach(self, client: AmoCRMClient) -> None:
        client.session.hooks.setdefault("response", []).append(self)


def _epoch() -> float:
    return time.time()


class RunContext:
    """Everything one executing run shares: connection, lease, client, counters, checkpoint."""

    def __init__(
        self,
        conn: Connection,
        lease: RunLease,
        row: dict[str, Any],
        client: AmoCRMClient,
        counter: RequestCounter,
        progress: Progress | None,
    ) -> None:
        self.conn = conn
        self.lease = lease
        self.run_id: int = row["id"]
        self.owner_id: int = row["owner_id"]
        self.entities: list[str] = [e for e in row["entities"] or [] if e in ENTITIES]
        self.full: bool = bool(row["full"])
        self.trigger: str = row["trigger"]
        self.checkpoint = Checkpoint.from_json(row["checkpoint"])
        self.counts: dict[str, Any] = dict(row["counts"] or {})
        self.client = client
        self.counter = counter
        self.progress = progress
        self.started = row["started_at"] or datetime.now(UTC)
        self.base_requests = int(row["requests"] or 0)
        self.base_rate_limited = int(row["rate_limited"] or 0)
        self.app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxy is typed as Flask
        self.overlap = int(current_app.config.get("SYNC_CURSOR_OVERLAP_SECONDS", 300))
        self.region = str(current_app.config.get("SYNC_PHONE_REGION", "RU"))
        self.rate = float(current_app.config.get("AMOCRM_RATE_LIMIT", 7.0))
        self._t0 = time.monotonic()
        self.page_seconds = 0.0  # moving average of the time spent storing one page

    # -- progress -------------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        progress = self.checkpoint.entities.values()
        pages = sum(p.pages for p in progress)
        records = sum(p.records for p in progress)
        return {
            "pages": pages,
            "records": records,
            "requests": self.base_requests + self.counter.requests,
            "rate_limited": self.base_rate_limited + self.counter.rate_limited,
        }

    def save(self, entity: str | None) -> None:
        """Write checkpoint and progress in the current transaction (lease-checked)."""
        self.lease.write(
            checkpoint=self.checkpoint.to_json(),
            counts=self.counts,
            current_entity=entity,
            **self.totals(),
        )

    def notify(self, entity: str | None) -> None:
        if self.progress is not None:
            elapsed = max(time.monotonic() - self._t0, 1e-6)
            totals = self.totals()
            self.progress(
                {
                    "run_id": self.run_id,
                    "entity": entity,
                    "rate": totals["records"] / elapsed,
                    **totals,
                }
            )


# -- one entity pass ------------------------------------------------------------------------


class PageWriter:
    """Writes pages (rows + checkpoint, one transaction each) in a thread of its own.

    While PostgreSQL works on page N (the GIL is free meanwhile), the run's thread maps page
    N+1. At most one write is in flight and they happen in page order, so the checkpoint still
    only moves forward and always describes committed rows. A failed write (LeaseLost, a
    database error) is raised in the run's thread at the next ``submit`` or ``wait``.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-write")
        self.pending: Future[None] | None = None

    def submit(self, table: Any, rows: list[dict[str, Any]], entity: str) -> None:
        self.wait()
        ctx = self.ctx
        # A snapshot: the run's thread keeps changing the live checkpoint.
        checkpoint = ctx.checkpoint.to_json()
        counts = copy.deepcopy(ctx.counts)
        totals = ctx.totals()

        def write() -> None:
            with ctx.app.app_context(), ctx.conn.begin():
                upsert_rows(ctx.conn, table, rows)
                ctx.lease.write(
                    checkpoint=checkpoint, counts=counts, current_entity=entity, **totals
                )

        self.pending = self.pool.submit(write)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        # Never leave a write running on the connection the caller is about to use.
        pending, self.pending = self.pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                pending.result()
        self.pool.shutdown(wait=True)


def _new_state(ctx: RunContext, entity: str) -> EntityProgress:
    with ctx.conn.begin():
        cursor = read_cursor(ctx.conn, ctx.owner_id, entity)
    mode: Mode
    if ctx.trigger == "reconcile":
        mode = "reconcile"
    elif ctx.full or cursor is None:
        mode = "full"
    else:
        mode = "incremental"
    return EntityProgress(
        mode=mode,
        started=_epoch(),
        cursor_from=cursor if mode == "incremental" else None,
        previous_cursor=cursor,
    )


def _sync_entity(ctx: RunContext, entity: str) -> None:
    state = ctx.checkpoint.entities.get(entity)
    if state is None:
        state = _new_state(ctx, entity)
    elif state.done:
        return
    elif state.mode == "reconcile" and state.page > 1:
        # The id set seen so far lived in the dead worker's memory: start the scan again.
        state.page, state.records, state.pages, state.started = 1, 0, 0, _epoch()
    ctx.checkpoint.entities[entity] = state
    with ctx.conn.begin():
        ctx.save(entity)
    logger.info(
        "sync run %s owner %s: %s %s from page %s",
        ctx.run_id,
        ctx.owner_id,
        entity,
        state.mode,
        state.page,
    )
    started = time.monotonic()
    table = entity_table(entity)
    seen_ids = array("q") if state.mode == "reconcile" else None
    stream = PageStream(
        ctx.client,
        entity,
        state.page,
        "incremental" if state.mode == "incremental" else "full",
        state.cursor_from,
    )
    concurrency = int(current_app.config.get("SYNC_FETCH_CONCURRENCY", 3))
    if state.mode != "incremental" and concurrency > 1:
        pages = parallel_pages(
            ctx.app,
            ctx.client,
            entity,
            state.page,
            concurrency,
            _expected_pages(ctx, entity, table),
            lambda: ctx.counter.in_flight_for(ctx.rate, ctx.page_seconds),
        )
    else:
        # Incremental paging decides page by page whether to go on: one request at a time.
        pages = prefetch(ctx.app, lambda: iter(stream))
    writer = PageWriter(ctx)
    try:
        for result in pages:
            began = time.monotonic()
            now = datetime.now(UTC)
            items = result.items
            if seen_ids is not None:
                # Reconcile reads the mirror before writing: no write may be in flight.
                writer.wait()
                seen_ids.extend(int(i["id"]) for i in items if isinstance(i.get("id"), int))
                with ctx.conn.begin():
                    known = _known_versions(ctx.conn, table, ctx.owner_id, items)
                # Reconcile writes only what the mirror lacks or holds in another version.
                items = [i for i in items if i.get("id") not in known or _differs(i, known)]
            else:
                # Read on a connection of its own before the page is written: the run's
                # connection belongs to the writer thread, which may still store the last page.
                with db.engine.connect() as conn:
                    known = _known_versions(conn, table, ctx.owner_id, items)
            rows = map_items(entity, ctx.owner_id, items, now, ctx.region)
            created = len([r for r in rows if r.get("id") not in known])
            changed = len([r for r in rows if r.get("id") in known and _differs(r, known)])
            state.created += created
            state.changed += changed
            state.page = result.page.page + 1
            state.pages += 1
            state.records += len(rows) if seen_ids is None else len(result.items)
            state.older += result.older
            stamps = [r["updated_at"] for r in rows if r["updated_at"] is not None]
            if stamps:
                top = int(max(stamps))
                if state.max_updated_at is None or top > state.max_updated_at:
                    state.max_updated_at = top
            if stream.check is not None:
                state.filter_ignored = not stream.check.filter_ok
                state.order_ignored = not stream.check.order_ok
            # The page and the checkpoint that points past it commit together, in the writer
            # thread, while this thread maps the next page.
            writer.submit(table, rows, entity)
            ctx.notify(entity)
            spent = time.monotonic() - began
            ctx.page_seconds = (
                spent if not ctx.page_seconds else 0.8 * ctx.page_seconds + 0.2 * spent
            )
        writer.wait()
    finally:
        writer.close()
    if stream.check is not None and not stream.check.filter_ok and not stream.check.order_ok:
        logger.warning(
            "owner %s: amoCRM ignored filter[updated_at] and order[updated_at] for %s; "
            "scanned every page instead",
            ctx.owner_id,
            entity,
        )
    if state.mode == "full":
        state.deleted += _sweep_unseen(ctx, entity, state)
    elif seen_ids is not None:
        state.deleted += _sweep_missing(ctx, entity, seen_ids)
    duration = time.monotonic() - started
    state.done = True
    state.duration = round(state.duration + duration, 3)
    ctx.counts[entity] = {
        "mode": state.mode,
        "records": state.records,
        "created": state.created,
        "changed": state.changed,
        "pages": state.pages,
        "deleted": state.deleted,
        "older": state.older,
        "filter_ignored": state.filter_ignored,
    }
    with ctx.conn.begin():
        save_cursor(
            ctx.conn,
            ctx.owner_id,
            entity,
            cursor=state.next_cursor(ctx.overlap),
            full=state.mode in ("full", "reconcile"),
            reconcile=state.mode == "reconcile",
        )
        write_log(
            ctx.conn,
            ctx.owner_id,
            f"sync_{entity}",
            "success",
            {
                "run_id": ctx.run_id,
                "mode": state.mode,
                "records": state.records,
                "created": state.created,
                "changed": state.changed,
                "pages": state.pages,
                "deleted": state.deleted,
                "duration_s": state.duration,
                "filter_ignored": state.filter_ignored,
                "trigger": ctx.trigger,
            },
            ctx.run_id,
        )
        ctx.save(entity)
    ctx.notify(entity)


def _expected_pages(ctx: RunContext, entity: str, table: Any) -> int | None:
    """How many pages the listing should have, judging by the mirror (None when it is empty)."""
    with ctx.conn.begin():
        rows = ctx.conn.execute(
            select(func.count())
            .select_from(table)
            .where(table.c.owner_id == ctx.owner_id, *entity_scope(entity, table))
        ).scalar()
    return math.ceil(rows / PAGE_LIMIT) if rows else None


def _known_versions(
    conn: Connection, table: Any, owner_id: int, items: list[dict[str, Any]]
) -> dict[Any, Any]:
    """id → updated_at the mirror holds for a page's items (one indexed read per page)."""
    ids = [i["id"] for i in items if isinstance(i.get("id"), int)]
    if not ids or "updated_at" not in table.c or "owner_id" not in table.c:
        return {}
    return dict(
        conn.execute(
            select(table.c.id, table.c.updated_at).where(
                table.c.owner_id == owner_id, table.c.id.in_(ids)
            )
        ).all()
    )


def _differs(item: dict[str, Any], known: dict[Any, Any]) -> bool:
    return bool(known[item["id"]] != item.get("updated_at"))


def _confirm_and_delete(ctx: RunContext, entity: str, candidates: list[int]) -> int:
    """Re-read candidate ids (batches of 250, 204 confirms a single id) and drop the gone ones."""
    deleted = 0
    for start in range(0, len(candidates), 250):
        batch = candidates[start : start + 250]
        with ctx.conn.begin():
            _up, gone = refetch_entities(
                ctx.owner_id, entity, batch, client=ctx.client, conn=ctx.conn
            )
            deleted += gone
            ctx.save(entity)
    if candidates:
        logger.info(
            "owner %s: %d %s missing from the listing, %d confirmed deleted",
            ctx.owner_id,
            len(candidates),
            entity,
            deleted,
        )
    return deleted


def _sweep_unseen(ctx: RunContext, entity: str, state: EntityProgress) -> int:
    """After a full pass: rows the pass did not touch are candidates for deletion."""
    table = entity_table(entity)
    since = datetime.fromtimestamp(state.started, UTC)
    candidates = list(
        ctx.conn.execute(
            select(table.c.id)
            .where(
                table.c.owner_id == ctx.owner_id,
                table.c.synced_at < since,
                *entity_scope(entity, table),
            )
            .order_by(table.c.id)
        ).scalars()
    )
    ctx.conn.rollback()
    return _confirm_and_delete(ctx, entity, candidates)


def _sweep_missing(ctx: RunContext, entity: str, seen: array[int]) -> int:
    """After a reconcile scan: mirror ids amoCRM did not list (sorted merge, 8 bytes an id)."""
    table = entity_table(entity)
    ordered = sorted(seen)
    candidates: list[int] = []
    index = 0
    # A server-side cursor for this one statement (Connection.execution_options would stick).
    result = ctx.conn.execute(
        select(table.c.id)
        .where(table.c.owner_id == ctx.owner_id, *entity_scope(entity, table))
        .order_by(table.c.id)
        .execution_options(yield_per=5000)
    )
    for (local_id,) in result:
        while index < len(ordered) and ordered[index] < local_id:
            index += 1
        if index >= len(ordered) or ordered[index] != local_id:
            candidates.append(local_id)
    result.close()
    ctx.conn.rollback()
    return _confirm_and_delete(ctx, entity, candidates)


# -- the run --------------------------------------------------------------------------------


def _fail_entities(ctx: RunContext, error: str) -> None:
    for entity in ctx.entities:
        state = ctx.checkpoint.entities.get(entity)
        if state is not None and state.done:
            continue
        details: dict[str, Any] = {
            "run_id": ctx.run_id,
            "error": error[:500],
            "trigger": ctx.trigger,
        }
        if state is not None:
            details.update(mode=state.mode, records=state.records, pages=state.pages)
        else:
            details["skipped"] = True
        write_log(ctx.conn, ctx.owner_id, f"sync_{entity}", "error", details, ctx.run_id)


def run_sync(run_id: int, *, progress: Progress | None = None) -> None:
    """Execute a queued run (or take over a stale one); returns quietly if it is not ours.

    Failures end the run with status ``error`` and a sync-log entry per entity; an amoCRM 403
    block also turns the owner's badge red. The checkpoint stays, so the next run resumes.
    """
    began = utcnow()
    with run_connection() as conn:
        claimed = claim_run(conn, run_id)
        if claimed is None:
            logger.info("sync run %s is not claimable (finished or held elsewhere)", run_id)
            return
        lease, row = claimed
        owner_id = row["owner_id"]
        counter = RequestCounter()
        try:
            client = client_for_owner(owner_id, retry=sync_retry_policy())
        except (NotConfigured, NotConnected) as exc:
            lease.finish(RunStatus.ERROR, f"amoCRM не подключён: {exc}")
            with conn.begin():
                for entity in row["entities"] or []:
                    write_log(
                        conn,
                        owner_id,
                        f"sync_{entity}",
                        "error",
                        {"run_id": run_id, "error": "not connected"},
                        run_id,
                    )
            return
        counter.attach(client)
        rate = float(current_app.config.get("AMOCRM_RATE_LIMIT", 7.0))
        if rate > 0:
            client.throttle = SpacedThrottle(
                client.throttle,
                pace_interval(rate),
                float(current_app.config.get("SYNC_LIMITER_MAX_WAIT", 300)),
            )
        ctx = RunContext(conn, lease, row, client, counter, progress)
        try:
            with lease.kept_alive(db.engine, heartbeat_interval()):
                _execute(ctx)
        except LeaseLost:
            logger.warning("sync run %s: lease lost, another worker continues it", run_id)
            return
        except AmoCRMAPIError as exc:
            _fail(ctx, exc, str(exc))
        except Exception as exc:
            logger.exception("sync run %s failed", run_id)
            _fail(ctx, exc, f"{type(exc).__name__}: {str(exc)[:300]}")
        else:
            _clear_badge(owner_id, began)
        finally:
            client.close()


def _clear_badge(owner_id: int, began: datetime) -> None:
    """A finished run proves amoCRM answers: an older error on the badge is stale."""
    try:
        record_api_success(owner_id, began)
    except Exception:  # the run itself succeeded; the badge catches up on the next success
        db.session.rollback()
        logger.warning("could not clear the badge of owner %s", owner_id, exc_info=True)


def _execute(ctx: RunContext) -> None:
    if ctx.checkpoint.reference is None:
        summary = sync_reference_data(ctx.owner_id, client=ctx.client, conn=ctx.conn)
        ctx.checkpoint.reference = summary
        with ctx.conn.begin():
            ctx.save(None)
    for entity in ctx.entities:
        _sync_entity(ctx, entity)
    totals = ctx.totals()
    ctx.lease.finish(
        RunStatus.SUCCESS,
        None,
        checkpoint=ctx.checkpoint.to_json(),
        counts=ctx.counts,
        **totals,
    )
    logger.info(
        "sync run %s owner %s done: %s records, %s pages, %s requests, %s rate-limited",
        ctx.run_id,
        ctx.owner_id,
        totals["records"],
        totals["pages"],
        totals["requests"],
        totals["rate_limited"],
    )


def _fail(ctx: RunContext, exc: Exception, message: str) -> None:
    if ctx.conn.in_transaction():
        ctx.conn.rollback()
    if isinstance(exc, AmoCRMBlocked):
        message = "amoCRM заблокировал доступ по API (403): синхронизация остановлена"
    elif isinstance(exc, AmoCRMRateLimited):
        message = "amoCRM ограничил частоту запросов (429): продолжим со следующего запуска"
    logger.warning("sync run %s owner %s failed: %s", ctx.run_id, ctx.owner_id, message)
    if isinstance(exc, AmoCRMAPIError):
        try:
            record_api_failure(ctx.owner_id, exc)
        except Exception:
            logger.exception("could not record the amoCRM failure on the badge")
    try:
        with ctx.conn.begin():
            _fail_entities(ctx, message)
        ctx.lease.finish(
            RunStatus.ERROR,
            message[:1000],
            checkpoint=ctx.checkpoint.to_json(),
            counts=ctx.counts,
            **ctx.totals(),
        )
    except LeaseLost:
        logger.warning("sync run %s: lease lost while recording the failure", ctx.run_id)
