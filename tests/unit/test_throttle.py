"""Pacing: 7 requests per rolling second, in one process and across processes (file and Redis)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from crm_app.amocrm.errors import AmoCRMUnavailable
from crm_app.amocrm.throttle import (
    FileThrottle,
    LocalThrottle,
    NullThrottle,
    RedisThrottle,
    Throttle,
    pace_interval,
)

RATE = 7.0


def clock_of(throttle: Throttle) -> Callable[[], float]:
    """The clock the throttle paces by: monotonic in one process, wall time across processes."""
    return time.monotonic if isinstance(throttle, LocalThrottle) else time.time


def timed_acquires(throttle: Throttle, key: str, n: int) -> list[float]:
    clock = clock_of(throttle)
    stamps = []
    for _ in range(n):
        throttle.acquire(key)
        stamps.append(clock())
    return stamps


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """The test session's own Redis db: another session flushing a shared db would reset a key."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(f"{RedisThrottle.KEY_PREFIX}test-*"):
        client.delete(key)
    client.close()


def unique_key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}.amocrm.ru"


# -- arithmetic -------------------------------------------------------------------------------------


def test_interval_has_a_safety_margin() -> None:
    interval = pace_interval(7.0)
    assert interval > 1 / 7
    # Eight sends span more than one second even with ~30 ms of jitter ...
    assert 7 * interval >= 1.03
    # ... while the pace stays within ~3 % of the floor.
    assert interval <= (1 / 7) * 1.032
    with pytest.raises(ValueError):
        pace_interval(0)
    with pytest.raises(ValueError):
        pace_interval(7, margin=1.5)


def test_local_throttle_with_fake_clock() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    throttle = LocalThrottle(7.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        throttle.acquire("a")
    throttle.acquire("b")  # other accounts have their own budget
    interval = pace_interval(7.0)
    assert slept == pytest.approx([interval, 2 * interval])


def test_local_throttle_late_wake_pushes_the_next_slot() -> None:
    now = [100.0]
    slept: list[float] = []

    def oversleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds + 0.05  # woke 50 ms late

    throttle = LocalThrottle(7.0, clock=lambda: now[0], sleep=oversleep)
    interval = pace_interval(7.0)
    throttle.acquire("a")  # at once
    throttle.acquire("a")  # sleeps one interval, wakes late
    woke = now[0]
    throttle.acquire("a")  # must leave a full interval after the late wake-up
    assert now[0] - woke >= interval
    assert slept == pytest.approx([interval, interval])


def test_null_throttle_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleeping(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s")

    monkeypatch.setattr(time, "sleep", no_sleeping)
    for _ in range(1000):
        NullThrottle().acquire("x")


# -- real time, one process ----------------------------------------------------------------------------


def make_local(tmp_path: Path, redis_client: redis.Redis) -> Throttle:
    return LocalThrottle(RATE)


def make_file(tmp_path: Path, redis_client: redis.Redis) -> Throttle:
    return FileThrottle(tmp_path / "throttle", RATE)


def make_redis(tmp_path: Path, redis_client: redis.Redis) -> Throttle:
    return RedisThrottle(redis_client, RATE)


@pytest.mark.parametrize(
    "factory", [make_local, make_file, make_redis], ids=["local", "file", "redis"]
)
def test_fifteen_acquires_never_beat_the_rate(
    factory: Callable[[Path, redis.Redis], Throttle], tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Never faster than 7 a second; how close to the floor it stays is a `make bench` row."""
    throttle = factory(tmp_path, redis_client)
    key = unique_key()
    start = clock_of(throttle)()
    stamps = timed_acquires(throttle, key, 15)
    # The slots are one interval apart from the first (which goes at once). Measured from before
    # the first call, a busy CPU can only make the span longer; the most sends in a rolling
    # second, which a late stamp can distort, is a `make bench` row.
    assert stamps[-1] - start >= 14 * pace_interval(RATE)


@pytest.mark.parametrize(
    "factory", [make_local, make_file, make_redis], ids=["local", "file", "redis"]
)
def test_threads_share_the_budget(
    factory: Callable[[Path, redis.Redis], Throttle], tmp_path: Path, redis_client: redis.Redis
) -> None:
    throttle = factory(tmp_path, redis_client)
    key = unique_key()
    stamps: list[float] = []
    lock = threading.Lock()
    start = clock_of(throttle)()

    def worker() -> None:
        mine = timed_acquires(throttle, key, 4)
        with lock:
            stamps.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 16
    # Four threads with a budget each would be done after 3 intervals; one shared budget needs 15.
    assert max(stamps) - start >= 15 * pace_interval(RATE)


def test_keys_are_independent(tmp_path: Path) -> None:
    waits: list[float] = []
    throttle = FileThrottle(tmp_path, RATE, sleep=waits.append)
    for i in range(10):
        throttle.acquire(f"account-{i}.amocrm.ru")
    assert waits == []  # every account's first request goes at once
    assert len(list(tmp_path.glob("*.slot"))) == 10


def test_file_throttle_survives_a_corrupt_or_far_future_slot(tmp_path: Path) -> None:
    waits: list[float] = []
    throttle = FileThrottle(tmp_path, RATE, sleep=waits.append)
    key = "demo.amocrm.ru"
    throttle.path_for(key).write_text("garbage")
    throttle.acquire(key)
    throttle.path_for(key).write_text(str(time.time() + 10_000))
    throttle.acquire(key)
    # Neither a corrupt file nor a slot hours ahead (a clock jump) makes a caller wait long.
    assert all(wait <= pace_interval(RATE) for wait in waits)


def test_file_throttle_key_names_are_safe(tmp_path: Path) -> None:
    throttle = FileThrottle(tmp_path, RATE)
    path = throttle.path_for("../../etc/passwd")
    assert path.parent == tmp_path
    assert throttle.path_for("a/b") != throttle.path_for("a_b")


def test_redis_keys_expire(redis_client: redis.Redis) -> None:
    throttle = RedisThrottle(redis_client, RATE)
    key = unique_key()
    throttle.acquire(key)
    ttl = redis_client.pttl(f"amocrm:rl:{key}")
    assert 0 < ttl <= 2000


def test_redis_outage_raises_unavailable() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    throttle = RedisThrottle(dead, RATE)
    with pytest.raises(AmoCRMUnavailable):
        throttle.acquire("demo.amocrm.ru")


# -- several processes -------------------------------------------------------------------------------


def _child(kind: str, target: str, key: str, n: int, out: multiprocessing.Queue) -> None:
    if kind == "file":
        throttle: Throttle = FileThrottle(target, RATE)
    else:
        throttle = RedisThrottle(redis.Redis.from_url(target), RATE)
    out.put(timed_acquires(throttle, key, n))


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_processes_share_the_budget(
    kind: str, tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    key = unique_key()
    target = str(tmp_path / "shared") if kind == "file" else redis_url
    procs = [ctx.Process(target=_child, args=(kind, target, key, 6, out)) for _ in range(3)]
    start = time.time()  # both throttles pace by wall time across processes
    for p in procs:
        p.start()
    stamps = [s for _ in procs for s in out.get(timeout=30)]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    assert len(stamps) == 18
    # 18 sends from one shared budget need 17 intervals; three budgets would need 5.
    assert max(stamps) - start >= 17 * pace_interval(RATE)
