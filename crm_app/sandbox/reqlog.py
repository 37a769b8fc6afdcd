"""The request log behind GET /_sandbox/requests: what the client under test really sent."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class RequestLog:
    def __init__(self, size: int) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=max(1, size))
        self.seq = 0
        self.lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            self.entries.append(entry)

    def items(
        self,
        kind: str | None = None,
        since: int = 0,
        path_prefix: str | None = None,
        method: str | None = None,
    ) -> list[dict[str, Any]]:
        with self.lock:
            snapshot = list(self.entries)
        out = []
        for entry in snapshot:
            if entry["seq"] <= since:
                continue
            if kind and entry.get("kind") != kind:
                continue
            if path_prefix and not entry["path"].startswith(path_prefix):
                continue
            if method and entry["method"] != method.upper():
                continue
            out.append(entry)
        return out

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
