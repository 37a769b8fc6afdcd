"""Client-side pacing of amoCRM requests (7 per second per account) in and across processes."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from crm_app.amocrm.errors import ThrottleUnavailable

logger = logging.getLogger(__name__)

DEFAULT_RATE = 7.0
# Pace slightly below the server's limit. Requests are spaced evenly (no bursts), so with
# interval 1/(7*0.97) = 147 ms any rolling second holds at most 7 sends, and 8 consecutive sends
# span 1.03 s: up to ~30 ms of network jitter cannot squeeze an eighth into one server-side
# second. Wall time stays within 3 % of the theoretical floor.
DEFAULT_MARGIN = 0.97
# A stored next-free slot further ahead than this is treated as corrupt (for instance written
# before a clock jump) and reset, rather than blocking callers for a long time.
_MAX_AHEAD_SECONDS = 120.0
# A sleeper that wakes this much later than its slot (a busy CPU, a GC pause) pushes the next
# slot back by as much; otherwise the following request would leave less than one interval
# after it, and eight requests could fit into one second.
_LATE_WAKE = 0.002


def pace_interval(rate: float, margin: float = DEFAULT_MARGIN) -> float:
    """Seconds between two requests for ``rate`` per second, slowed by ``margin``."""
    if rate <= 0 or not 0 < margin <= 1:
        raise ValueError("rate must be > 0 and margin in (0, 1]")
    return 1.0 / (rate * margin)


@runtime_checkable
class Throttle(Protocol):
    """Blocks until one more request to the account ``key`` may go out."""

    def acquire(self, key: str) -> None:
        """Wait for the next free slot of ``key`` and take it."""
        ...


class NullThrottle:
    """No pacing at all (tests, or when something upstream already paces)."""

    def acquire(self, key: str) -> None:
        """Return at once."""


class LocalThrottle:
    """Even pacing (GCRA with no burst) for the threads of one process."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = pace_interval(rate, margin)
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> None:
        """Reserve the next slot under a lock, then sleep until it outside the lock."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + self.interval
        if slot <= now:
            return
        self._sleep(slot - now)
        woke = self._clock()
        if woke - slot > _LATE_WAKE:
            with self._lock:
                self._next[key] = max(self._next[key], woke + self.interval)


def _key_filename(key: str) -> str:
    # Readable prefix for operators, hash suffix so distinct keys never collide.
    readable = re.sub(r"[^A-Za-z0-9.-]", "_", key)[:64]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}.slot"


class FileThrottle:
    """Even pacing shared by every process on one machine (no Redis needed).

    Each key has a small file holding the next free slot (wall-clock seconds). A process takes
    an exclusive ``fcntl.flock`` on it, reads the slot, writes slot + interval, unlocks, and then
    sleeps until its slot. The file is opened anew on every call: a descriptor inherited across
    ``fork`` shares its lock with the parent and would not exclude it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        rate: float = DEFAULT_RATE,
        *,
        margin: float = DEFAULT_MARGIN,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.directory = Path(directory)
        self.interval = pace_interval(rate, margin)
        self._sleep = sleep
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """The slot file used for ``key``."""
        return self.directory / _key_filename(key)

    def acquire(self, key: str) -> None:
        """Take the next slot of ``key`` under a file lock, then sleep until it."""
        now, slot = self._update(key, lambda stored, now: max(now, stored))
        if slot <= now:
            return
        started = time.monotonic()
        self._sleep(slot - now)
        if time.monotonic() - started - (slot - now) > _LATE_WAKE:
            self._update(key, lambda stored, now: max(stored - self.interval, now))

    def _update(self, key: str, pick: Callable[[float, float], float]) -> tuple[float, float]:
        """Under the file lock: slot = pick(stored, now); store slot + interval."""
        fd = os.open(self.path_for(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # time.time() rather than monotonic: it means the same in every process and
                # survives a reboot; _MAX_AHEAD_SECONDS guards against clock jumps.
                now = time.time()
                slot = pick(self._read(fd, now), now)
                os.pwrite(fd, f"{slot + self.interval:.6f}".ljust(24).encode("ascii"), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return now, slot

    @staticmethod
    def _read(fd: int, now: float) -> float:
        raw = os.pread(fd, 64, 0)
        try:
            value = float(raw.decode("ascii").strip() or 0.0)
        except ValueError:
            return now
        if value - now > _MAX_AHEAD_SECONDS:
            logger.warning("throttle slot file is %.0f s ahead; resetting it", value - now)
            return now
        return value


# GCRA with no burst allowance, in microseconds of Redis server time, so all machines share
# one clock. string.format keeps the stored number exact (tostring would use %.14g).
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local max_ahead = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now or tat - now > max_ahead then
  tat = now
end
local nxt = tat + interval
local ttl_ms = math.floor((nxt - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', ttl_ms)
return tat - now
"""

# After a late wake-up: the next slot is at least one interval after now.
_LATE_LUA = """
local interval = tonumber(ARGV[1])
local t = redis.call('TIME')
local nxt = tonumber(t[1]) * 1000000 + tonumber(t[2]) + interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if nxt > tat then
  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor(interval / 1000) + 1000)
end
return 0
"""


class RedisThrottle:
    """Even pacing shared by every process on every machine through one Redis key per account.

    Keys are ``amocrm:rl:<key>``; they expire on their own shortly after the last request.
    A Redis failure raises ThrottleUnavailable (an AmoCRMUnavailable): going on unpaced could earn a sticky 403 block.
    """

    KEY_PREFIX = "amocrm:rl:"

    def __init__(
        self,
        redis_client: Any,
        rate: float = DEFAULT_RATE,
        *,
        margin: float = DEFAULT_MARGIN,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = pace_interval(rate, margin)
        self._interval_us = round(self.interval * 1_000_000)
        self._sleep = sleep
        self._redis = redis_client
        self._script = redis_client.register_script(_GCRA_LUA)
        self._late_script = redis_client.register_script(_LATE_LUA)

    def acquire(self, key: str) -> None:
        """Reserve the next slot atomically in Redis, then sleep until it."""
        import redis  # imported here so the embedded mode never needs the package loaded

        try:
            wait_us = int(
                self._script(
                    keys=[self.KEY_PREFIX + key],
                    args=[self._interval_us, int(_MAX_AHEAD_SECONDS * 1_000_000)],
                )
            )
        except redis.RedisError as exc:
            logger.error("amoCRM rate limiter in Redis failed: %s", type(exc).__name__)
            raise ThrottleUnavailable(
                "the shared amoCRM rate limiter (Redis) is unavailable"
            ) from exc
        if wait_us <= 0:
            return
        started = time.monotonic()
        self._sleep(wait_us / 1_000_000)
        if time.monotonic() - started - wait_us / 1_000_000 > _LATE_WAKE:
            try:
                self._late_script(keys=[self.KEY_PREFIX + key], args=[self._interval_us])
            except redis.RedisError:
                # The slot is ours already; only the extra safety is lost.
                logger.warning("could not push back the amoCRM rate slot in Redis")
