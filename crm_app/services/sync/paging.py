"""Page streams for one entity: full (by id), incremental (by updated_at, verified), prefetched."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask

from crm_app.amocrm.client import AmoCRMClient, Page
from crm_app.amocrm.errors import ThrottleUnavailable
from crm_app.services.sync.mappers import NOTE_SCOPES, as_int

logger = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_LIMIT = 250
# Documented order fields: tasks have no order[updated_at], see docs/sync.md
# (https://www.amocrm.ru/developers/content/crm_platform/tasks-api).
ORDER_FIELDS = {
    "contacts": ("updated_at", "id"),
    "leads": ("created_at", "updated_at", "id"),
    "tasks": ("created_at", "complete_till", "id"),
}


class SpacedThrottle:
    """The shared throttle, plus: this run's own requests leave at least one interval apart.

    The shared throttle hands out slots in advance. With two requests in flight, the second
    has its slot before the first one's sleeper wakes; if the first wakes late (a busy CPU),
    the two would leave less than an interval apart and eight could fit into one second.
    Measuring from when each request really left the throttle keeps them spaced.
    """

    def __init__(self, inner: Any, interval: float, limiter_max_wait: float = 0.0) -> None:
        self.inner = inner
        self.interval = interval
        self.limiter_max_wait = limiter_max_wait
        self._lock = threading.Lock()
        self._last: float | None = None

    def _shared_slot(self, key: str) -> None:
        """The shared throttle's slot; while its Redis is down, wait for it (up to a limit).

        Going on unpaced could earn a 403 block, and failing would throw the run away for an
        outage that usually lasts seconds; the run's heartbeat goes on meanwhile.
        """
        deadline = time.monotonic() + self.limiter_max_wait
        delay = 0.5
        while True:
            try:
                self.inner.acquire(key)
                return
            except ThrottleUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def acquire(self, key: str) -> None:
        self._shared_slot(key)
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now < self._last + self.interval:
                time.sleep(self._last + self.interval - now)
                now = time.monotonic()
            self._last = now


def fetch_page(
    client: AmoCRMClient,
    entity: str,
    page: int,
    *,
    filter_: dict[str, Any] | None = None,
    order: dict[str, str] | None = None,
) -> Page:
    """One page of contacts, leads (``with=contacts``), tasks, or lead/contact notes."""
    if entity == "contacts":
        return client.get_contacts(limit=PAGE_LIMIT, page=page, filter_=filter_, order=order)
    if entity == "leads":
        return client.get_leads(
            limit=PAGE_LIMIT, page=page, filter_=filter_, order=order, with_="contacts"
        )
    if entity == "tasks":
        return client.get_tasks(limit=PAGE_LIMIT, page=page, filter_=filter_, order=order)
    if entity in NOTE_SCOPES:
        return client.get_notes(
            NOTE_SCOPES[entity], limit=PAGE_LIMIT, page=page, filter_=filter_, order=order
        )
    raise ValueError(f"unknown entity {entity!r}")


@dataclass
class IncrementalCheck:
    """Client-side verification of an incremental listing (amoCRM may ignore the filter).

    ``filter_ok`` stays True while every item is at or after the cursor; ``order_ok`` while
    ``updated_at`` never increases from one item to the next. Once an older item shows up and
    the order holds, everything after it is older too, so paging stops. If neither holds the
    account answered an unfiltered, unsorted listing and only a scan of every page is safe.
    """

    cursor_from: int
    filter_ok: bool = True
    order_ok: bool = True
    last: int | None = None
    older_seen: int = 0

    def keep(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record what this page shows; return its items that changed since the cursor."""
        kept = []
        for item in items:
            updated = as_int(item.get("updated_at"))
            if updated is None:
                kept.append(item)  # cannot tell: refreshing it is harmless
                continue
            if self.last is not None and updated > self.last:
                self.order_ok = False
            self.last = updated
            if updated < self.cursor_from:
                self.filter_ok = False
                self.older_seen += 1
            else:
                kept.append(item)
        return kept

    @property
    def exhausted(self) -> bool:
        """True once the remaining pages can only hold records older than the cursor."""
        return not self.filter_ok and self.order_ok


@dataclass
class PageResult:
    """A fetched page plus what the consumer should store from it."""

    page: Page
    items: list[dict[str, Any]]
    last: bool
    older: int = 0


@dataclass
class PageStream:
    """Iterates the pages of one entity pass, deciding in the fetching thread when to stop."""

    client: AmoCRMClient
    entity: str
    start_page: int
    mode: str  # full | incremental | reconcile
    cursor_from: int | None = None
    check: IncrementalCheck | None = field(default=None, init=False)

    def params(self) -> tuple[dict[str, Any] | None, dict[str, str]]:
        if self.mode == "incremental":
            # filter[updated_at][from] is documented for all three; order[updated_at] is not
            # documented for tasks. We send it anyway and never rely on it: IncrementalCheck
            # verifies both on every page.
            return {"updated_at": {"from": self.cursor_from}}, {"updated_at": "desc"}
        # id order: new records land on the last pages, so page N stays page N on resume.
        return None, {"id": "asc"}

    def __iter__(self) -> Iterator[PageResult]:
        filter_, order = self.params()
        if self.mode == "incremental":
            self.check = IncrementalCheck(int(self.cursor_from or 0))
        number = max(1, self.start_page)
        while True:
            page = fetch_page(self.client, self.entity, number, filter_=filter_, order=order)
            items = page.items
            older = 0
            last = not page.has_next or not items
            if self.check is not None:
                before = self.check.older_seen
                items = self.check.keep(items)
                older = self.check.older_seen - before
                if self.check.exhausted:
                    last = True
            yield PageResult(page, items, last, older)
            if last:
                return
            number = max(number, page.page) + 1


def parallel_pages(
    app: Flask,
    client: AmoCRMClient,
    entity: str,
    start_page: int,
    concurrency: int = 3,
    expected_pages: int | None = None,
    wanted: Callable[[], int] | None = None,
) -> Iterator[PageResult]:
    """A full listing (id order) with up to ``concurrency`` page requests in flight.

    Real amoCRM takes a few hundred milliseconds for a page of 250; one request at a time would
    leave most of the 7-per-second budget unused. Pages are still handed over strictly in
    order (the checkpoint only ever moves forward), at most ``concurrency`` exist at once, and
    the throttle spaces the requests.

    amoCRM gives no totals, so requests in flight when the last page arrives are wasted. To keep
    that small: ``wanted()`` says how many requests in flight the budget can use at all (from
    the measured latency; 1 when answers come back faster than the throttle lets requests go),
    parallelism ramps up only while pages keep announcing a next one, and beyond
    ``expected_pages`` (the mirror's size, when known) pages are asked for one at a time.
    """
    filter_, order = None, {"id": "asc"}

    def fetch(number: int) -> Page:
        with app.app_context():
            return fetch_page(client, entity, number, filter_=filter_, order=order)

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync-fetch")
    pending: dict[int, Future[Page]] = {}
    submit_next = expect = max(1, start_page)
    confirmed = 0  # pages seen that announced another one

    def fill() -> None:
        nonlocal submit_next
        limit = max(1, min(concurrency, confirmed + 1, wanted() if wanted else concurrency))
        while len(pending) < limit:
            beyond = expected_pages is not None and submit_next > expected_pages
            if beyond and pending:
                break
            pending[submit_next] = pool.submit(fetch, submit_next)
            submit_next += 1

    try:
        fill()
        while True:
            page = pending.pop(expect).result()
            last = not page.has_next or not page.items
            if not last:
                # Ask for the next page(s) before handing this one over: fetching overlaps
                # storing even with a single request in flight.
                confirmed += 1
                expect += 1
                fill()
            yield PageResult(page, page.items, last)
            if last:
                return
    finally:
        for future in pending.values():
            future.cancel()
        pool.shutdown(wait=True)


_DONE = object()


def prefetch(app: Flask, source: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """Run ``source`` in a thread, ``depth`` items ahead, so fetching overlaps storing.

    Memory stays flat: at most ``depth`` + 1 pages exist at once. An exception in the thread is
    re-raised here; leaving the loop early stops the thread after its current request.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        with app.app_context():
            try:
                for item in source():
                    while not stop.is_set():
                        try:
                            buffer.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                buffer.put(_DONE)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                buffer.put(exc)

    thread = threading.Thread(target=worker, name="sync-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full buffer, then let it finish its request.
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.1)
        thread.join()
