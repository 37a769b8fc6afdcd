"""The webhook spool: deliveries accepted while the database cannot take them.

When the inbox insert (or the token lookup before it) fails because the database is down, the
raw delivery is appended to a file under ``instance/webhook-spool/`` and fsynced before the
200 goes out, so amoCRM never sees an error (a hundred of them switch the hook off). A sweeper
thread in the same process moves spooled deliveries into the inbox once the database answers;
the inbox's body-hash constraint makes that idempotent, so a sweep cut short by a crash is
simply repeated.

One file per process at a time, written under an exclusive ``flock``. A sweeper only reads a
file it can lock itself: its own after rotating it, or one left by a process that is gone.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flask import Flask

logger = logging.getLogger(__name__)

FOLDER = "webhook-spool"
SUFFIX = ".jsonl"


class SpoolFull(RuntimeError):
    """WEBHOOK_SPOOL_MAX_BYTES reached: the delivery is refused (amoCRM sends it again)."""


@dataclass(frozen=True)
class Spooled:
    token_hash: str
    body: bytes
    request_id: str | None


def folder(app: Flask) -> Path:
    return Path(app.instance_path) / FOLDER


def _encode(item: Spooled) -> bytes:
    record = {
        "t": item.token_hash,
        "r": item.request_id,
        "b": base64.b64encode(item.body).decode("ascii"),
        "at": time.time(),
    }
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def read_file(path: Path) -> Iterator[Spooled]:
    """Records of one spool file; a torn last line (crash mid-write) is skipped."""
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                logger.warning("spool %s ends in a torn record; skipped", path.name)
                break
            try:
                record = json.loads(line)
                yield Spooled(record["t"], base64.b64decode(record["b"]), record.get("r"))
            except (ValueError, KeyError, TypeError):
                logger.warning("unreadable record in spool %s; skipped", path.name)


class Spool:
    """The process's writer and sweeper for one app."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.pid = os.getpid()
        self.dir = folder(app)
        self.lock = threading.Lock()
        self.handle: IO[bytes] | None = None
        self.seq = 0
        self.wake = threading.Event()
        self.sweeper: threading.Thread | None = None

    # -- writing ------------------------------------------------------------------------------

    def _open(self) -> IO[bytes]:
        if self.handle is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.seq += 1
            name = f"spool-{self.pid}-{int(time.time() * 1000)}-{self.seq}{SUFFIX}"
            # Locked under a name sweepers ignore, then renamed: no sweeper can take (and
            # delete) the file between its creation and the lock.
            handle = (self.dir / (name + ".new")).open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            os.rename(self.dir / (name + ".new"), self.dir / name)
            self.handle = handle
        return self.handle

    def size(self) -> int:
        total = 0
        for path in self.dir.glob(f"*{SUFFIX}*"):
            with contextlib.suppress(FileNotFoundError):  # swept meanwhile
                total += path.stat().st_size
        return total

    def append(self, item: Spooled) -> None:
        """Durably store one delivery (written and fsynced when this returns)."""
        limit = int(self.app.config.get("WEBHOOK_SPOOL_MAX_BYTES", 256 * 1024 * 1024))
        with self.lock:
            if self.dir.exists() and self.size() >= limit:
                raise SpoolFull(f"webhook spool holds {limit} bytes already")
            handle = self._open()
            handle.write(_encode(item))
            handle.flush()
            os.fsync(handle.fileno())
        self.start_sweeper()

    def _rotate(self) -> None:
        """Close the current file so the sweeper can lock and read it."""
        with self.lock:
            if self.handle is not None:
                self.handle.close()  # releases the flock
                self.handle = None

    # -- sweeping -----------------------------------------------------------------------------

    def start_sweeper(self) -> None:
        if self.sweeper is not None and self.sweeper.is_alive():
            return
        with self.lock:
            if self.sweeper is not None and self.sweeper.is_alive():
                return
            self.sweeper = threading.Thread(target=self._loop, name="webhook-spool", daemon=True)
            self.sweeper.start()

    def _loop(self) -> None:
        interval = float(self.app.config.get("WEBHOOK_SPOOL_SWEEP_SECONDS", 2.0))
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            try:
                left = self.sweep()
            except Exception as exc:  # database still down, say: try again next round
                logger.info("webhook spool sweep postponed: %s", type(exc).__name__)
                continue
            if not left:
                with self.lock:
                    if self.handle is None and not any(self.dir.glob(f"*{SUFFIX}")):
                        self.sweeper = None
                        return

    def sweep(self) -> int:
        """Move every lockable spool file into the inbox; the number of files left behind."""
        from crm_app.services.webhooks import receive

        receive.probe_database(self.app)  # raises while the database is still down
        self._rotate()
        left = 0
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                handle = path.open("rb")
            except FileNotFoundError:  # another process swept it meanwhile
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    left += 1  # another live process is still writing it
                    continue
                if not path.exists():  # swept by someone else between glob and lock
                    continue
                stored = moved = 0
                for item in read_file(path):
                    stored += receive.restore(self.app, item)
                    moved += 1
                path.unlink()
            logger.warning(
                "webhook spool %s: %d deliveries moved to the inbox (%d new)",
                path.name,
                moved,
                stored,
            )
        return left


_guard = threading.Lock()


def spool_for(app: Flask) -> Spool:
    """This process's spool for `app` (a fresh one after a fork)."""
    spool: Spool | None = app.extensions.get("crm_webhook_spool")
    if spool is None or spool.pid != os.getpid():
        with _guard:
            spool = app.extensions.get("crm_webhook_spool")
            if spool is None or spool.pid != os.getpid():
                spool = app.extensions["crm_webhook_spool"] = Spool(app)
    return spool


def sweep_leftovers(app: Flask) -> None:
    """Start the sweeper when files from an earlier process are waiting (startup sweep)."""
    if any(folder(app).glob(f"*{SUFFIX}")):
        spool_for(app).start_sweeper()


def pending_records(app: Flask) -> int:
    """Deliveries waiting in the spool (for the readiness probe and the tests)."""
    return sum(sum(1 for _ in read_file(p)) for p in folder(app).glob(f"*{SUFFIX}") if p.is_file())
