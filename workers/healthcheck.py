"""Container health check of the beat: `python -m workers.healthcheck beat SCHEDULE_FILE`.

Celery beat serves no HTTP and answers no `inspect ping`, but while it ticks it rewrites its
schedule file (every `sync_every`, 3 minutes, at the next tick; a tick comes at least every
30 s with this project's schedule). A file missing or untouched for `--max-age` seconds means
the beat is not ticking.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# 3 minutes between syncs plus the longest wait for a tick, with a wide margin.
DEFAULT_MAX_AGE = 600.0


def schedule_age(schedule: Path, now: float | None = None) -> float | None:
    """Seconds since the schedule was last written, or None when it does not exist.

    The shelve behind it may be one file or several (`.dat`/`.dir`/`.bak` with dbm.dumb).
    """
    files = [schedule, *schedule.parent.glob(schedule.name + ".*")]
    mtimes = [f.stat().st_mtime for f in files if f.is_file()]
    if not mtimes:
        return None
    return (time.time() if now is None else now) - max(mtimes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.healthcheck")
    parser.add_argument("role", choices=["beat"])
    parser.add_argument("schedule", type=Path, help="the beat's --schedule file")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE)
    args = parser.parse_args(argv)
    age = schedule_age(args.schedule)
    if age is None:
        print(f"unhealthy: {args.schedule} does not exist", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"unhealthy: {args.schedule} last written {age:.0f} s ago", file=sys.stderr)
        return 1
    print(f"healthy: schedule written {age:.0f} s ago")
    return 0


if __name__ == "__main__":
    sys.exit(main())
