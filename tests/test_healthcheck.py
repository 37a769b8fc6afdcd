"""The beat's container health check (`python -m workers.healthcheck beat FILE`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from workers.healthcheck import main, schedule_age


def test_missing_schedule_is_unhealthy(tmp_path: Path) -> None:
    assert schedule_age(tmp_path / "celerybeat-schedule") is None
    assert main(["beat", str(tmp_path / "celerybeat-schedule")]) == 1


def test_fresh_schedule_is_healthy_stale_is_not(tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    schedule.write_bytes(b"x")
    assert main(["beat", str(schedule)]) == 0
    old = time.time() - 3600
    os.utime(schedule, (old, old))
    assert main(["beat", str(schedule), "--max-age", "600"]) == 1


def test_dbm_dumb_files_count_newest_first(tmp_path: Path) -> None:
    # Without gdbm the shelve is celerybeat-schedule.dat/.dir/.bak; the newest one counts.
    old = time.time() - 3600
    for suffix in (".bak", ".dat"):
        (tmp_path / f"celerybeat-schedule{suffix}").write_bytes(b"x")
        os.utime(tmp_path / f"celerybeat-schedule{suffix}", (old, old))
    (tmp_path / "celerybeat-schedule.dir").write_bytes(b"x")
    age = schedule_age(tmp_path / "celerybeat-schedule")
    assert age is not None and age < 60
