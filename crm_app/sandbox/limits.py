"""Rate limits (7 req/s per integration, optional per-account cap) and the 403 block they escalate to."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from flask import Response

from crm_app.sandbox import errors
from crm_app.sandbox.config import SandboxConfig

HTML_429 = (
    "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
HTML_403 = (
    "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    "<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
RETRY_AFTER = 300  # the value in Kommo's documented 429 body


class Limiter:
    """Rolling one-second windows of accepted calls; 429s per account escalate to a block."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.windows: dict[Hashable, deque[float]] = {}
        self.violations: dict[int, deque[float]] = {}
        self.blocked: dict[int, float] = {}  # account id -> clock deadline (inf: until lifted)
        self.lock = threading.Lock()

    def allow(self, client_id: str, account_id: int) -> bool:
        """Count one API call; False means it must be answered with 429."""
        limit = self.config.rate_limit
        account_limit = self.config.account_rate_limit
        if limit <= 0 and account_limit <= 0:
            return True
        now = self.clock()
        with self.lock:
            keys: list[tuple[Hashable, int]] = []
            if limit > 0:
                keys.append((("integration", client_id, account_id), limit))
            if account_limit > 0:
                keys.append((("account", account_id), account_limit))
            windows = []
            for key, cap in keys:
                window = self.windows.setdefault(key, deque())
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= cap:
                    return False
                windows.append(window)
            # Rejected calls are not counted, so a client that backs off gets through again.
            for window in windows:
                window.append(now)
        return True

    def violation(self, account_id: int) -> bool:
        """Record a 429; True when the account has just been blocked."""
        after = self.config.block_after
        if after <= 0:
            return False
        now = self.clock()
        with self.lock:
            seen = self.violations.setdefault(account_id, deque())
            seen.append(now)
            while seen and seen[0] <= now - self.config.block_window:
                seen.popleft()
            if len(seen) >= after:
                duration = self.config.block_duration
                self.blocked[account_id] = now + duration if duration > 0 else float("inf")
                seen.clear()
                return True
        return False

    def is_blocked(self, account_id: int) -> bool:
        deadline = self.blocked.get(account_id)
        if deadline is None:
            return False
        if self.clock() >= deadline:
            with self.lock:
                self.blocked.pop(account_id, None)
            return False
        return True

    def unblock(self, account_id: int | None = None) -> list[int]:
        with self.lock:
            ids = list(self.blocked) if account_id is None else [account_id]
            for item in ids:
                self.blocked.pop(item, None)
                self.violations.pop(item, None)
        return ids

    def reset(self) -> None:
        with self.lock:
            self.windows.clear()
            self.violations.clear()
            self.blocked.clear()


def too_many(config: SandboxConfig) -> Response:
    if config.body_429 == "html":
        response = Response(HTML_429, status=429, content_type="text/html")
    else:
        response = errors.problem(
            429,
            "You have sent too many requests in a given amount of time. Please try again later.",
            retry_after=RETRY_AFTER,
        )
    if config.retry_after_header:
        response.headers["Retry-After"] = "1"
    return response


def forbidden(config: SandboxConfig) -> Response:
    if config.body_403 == "html":
        return Response(HTML_403, status=403, content_type="text/html")
    return Response("403 Forbidden", status=403, content_type="text/plain")
