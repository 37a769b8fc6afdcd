"""Background webhook delivery: 2-second timeout, the documented retry ladder, auto-disable."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from crm_app.sandbox.config import SandboxConfig

logger = logging.getLogger(__name__)

USER_AGENT = "amoCRM-Webhooks/3.0"
MINUTE = 60.0
# Delay before attempts 2..5; attempts 4 and 5 only follow a 499 or 5xx
# (https://www.amocrm.ru/developers/content/crm_platform/webhooks-format).
LADDER = {2: 5 * MINUTE, 3: 15 * MINUTE, 4: 15 * MINUTE, 5: 60 * MINUTE}
DISABLE_WINDOW = 2 * 3600.0


def is_valid(code: int) -> bool:
    return 100 <= code <= 299


def next_attempt(attempt: int, code: int) -> int | None:
    """The attempt that follows a failed one, or None when the ladder ends."""
    if is_valid(code) or attempt >= 5:
        return None
    if attempt <= 2:
        return attempt + 1
    if code == 499 or 500 <= code <= 599:
        return attempt + 1
    return None


@dataclass(order=True)
class Delivery:
    due: float
    seq: int
    hook: dict[str, Any] = field(compare=False)
    account_id: int = field(compare=False)
    body: str = field(compare=False)
    events: list[str] = field(compare=False)
    request_id: str = field(compare=False)
    attempt: int = field(compare=False, default=1)


class Dispatcher:
    """A heap of due deliveries served by a few worker threads; API responses never wait."""

    def __init__(
        self,
        config: SandboxConfig,
        lock_for: Callable[[int], threading.RLock],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock  # when deliveries fall due; the sandbox's Clock moves it in tests
        self.lock_for = lock_for
        self.heap: list[Delivery] = []
        self.cond = threading.Condition()
        self.seq = itertools.count(1)
        self.log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.log_seq = itertools.count(1)
        self.invalid: dict[int, deque[float]] = {}
        self.threads: list[threading.Thread] = []
        self.running = False
        self.inflight = 0
        self.busy: set[int] = set()

    def start(self) -> None:
        self.running = True
        for n in range(max(1, self.config.webhook_workers)):
            thread = threading.Thread(target=self._work, name=f"sandbox-webhooks-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(timeout=self.config.webhook_timeout + 1)
        self.threads.clear()

    def enqueue(self, hook: dict[str, Any], account_id: int, body: str, events: list[str]) -> None:
        delivery = Delivery(
            self.clock(), next(self.seq), hook, account_id, body, events, str(uuid.uuid4())
        )
        with self.cond:
            heapq.heappush(self.heap, delivery)
            self.cond.notify()

    def wake(self) -> None:
        """Re-check what is due (the clock was moved forward)."""
        with self.cond:
            self.cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is due now and nothing is being sent; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.inflight or self._due_now():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(timeout=min(left, 0.05))
        return True

    def _due_now(self) -> bool:
        now = self.clock()
        return any(d.due <= now for d in self.heap)

    def pending(self) -> int:
        with self.cond:
            return len(self.heap) + self.inflight

    def clear(self) -> None:
        """Forget queued retries, the delivery log and the invalid-answer counters."""
        with self.cond:
            self.heap.clear()
            self.log.clear()
        self.invalid.clear()

    def deliveries(self, since: int = 0) -> list[dict[str, Any]]:
        with self.cond:
            return [entry for entry in self.log if entry["id"] > since]

    def _work(self) -> None:
        while True:
            with self.cond:
                delivery = self._take()
                while self.running and delivery is None:
                    self.cond.wait(timeout=self._wait_time())
                    delivery = self._take()
                if not self.running:
                    return
                assert delivery is not None
                self.inflight += 1
                self.busy.add(delivery.hook["id"])
            try:
                self._deliver(delivery)
            except Exception:  # a broken destination must never kill the sender
                logger.exception("webhook delivery crashed")
            finally:
                with self.cond:
                    self.inflight -= 1
                    self.busy.discard(delivery.hook["id"])
                    self.cond.notify_all()

    def _take(self) -> Delivery | None:
        """The earliest due delivery whose destination is idle: one hook gets events in order."""
        now = self.clock()
        ready = [d for d in self.heap if d.due <= now and d.hook["id"] not in self.busy]
        if not ready:
            return None
        chosen = min(ready)
        self.heap.remove(chosen)
        heapq.heapify(self.heap)
        return chosen

    def _wait_time(self) -> float | None:
        now = self.clock()
        future = [d.due - now for d in self.heap if d.due > now]
        return max(0.001, min(future)) if future else None

    def _deliver(self, delivery: Delivery) -> None:
        hook = delivery.hook
        if hook.get("disabled") or hook.get("deleted"):
            return
        started = time.monotonic()
        code, error = self._post(hook["destination"], delivery)
        elapsed = time.monotonic() - started
        follow = next_attempt(delivery.attempt, code)
        delay = LADDER[follow] * self.config.webhook_time_scale if follow else None
        disabled = False if is_valid(code) else self._note_invalid(hook, delivery.account_id)
        if disabled:
            follow, delay = None, None
        entry = {
            "id": next(self.log_seq),
            "webhook_id": hook["id"],
            "account_id": delivery.account_id,
            "destination": hook["destination"],
            "request_id": delivery.request_id,
            "attempt": delivery.attempt,
            "status_code": code,
            "ok": is_valid(code),
            "error": error,
            "ts": time.time(),
            "duration_ms": round(elapsed * 1000, 1),
            "events": delivery.events,
            "body": delivery.body,
            "next_attempt": follow,
            "next_attempt_in": delay,
            "disabled_hook": disabled,
        }
        with self.cond:
            self.log.append(entry)
        if follow is not None and delay is not None:
            retry = Delivery(
                self.clock() + delay,
                next(self.seq),
                hook,
                delivery.account_id,
                delivery.body,
                delivery.events,
                delivery.request_id,
                follow,
            )
            with self.cond:
                heapq.heappush(self.heap, retry)
                self.cond.notify()

    def _post(self, url: str, delivery: Delivery) -> tuple[int, str | None]:
        headers = {
            "User-Agent": USER_AGENT,
            "X-Amocrm-Requestid": delivery.request_id,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept-Encoding": "gzip",
        }
        try:
            with requests.Session() as session:
                session.trust_env = False  # talk to the destination directly, never via env proxies
                response = session.post(
                    url,
                    data=delivery.body.encode("ascii"),
                    headers=headers,
                    timeout=self.config.webhook_timeout,
                    allow_redirects=False,
                )
                return response.status_code, None
        except requests.Timeout:
            return 0, "timeout"
        except requests.RequestException as exc:
            return 0, type(exc).__name__

    def _note_invalid(self, hook: dict[str, Any], account_id: int) -> bool:
        """Disable after more than N invalid answers in 2 hours, the last one invalid."""
        now = self.clock()
        window = DISABLE_WINDOW * self.config.webhook_time_scale
        with self.lock_for(account_id):
            seen = self.invalid.setdefault(hook["id"], deque())
            seen.append(now)
            while seen and seen[0] <= now - window:
                seen.popleft()
            if len(seen) > self.config.webhook_disable_threshold and not hook.get("disabled"):
                hook["disabled"] = True
                return True
        return False

    def reset_hook(self, hook_id: int) -> None:
        self.invalid.pop(hook_id, None)
