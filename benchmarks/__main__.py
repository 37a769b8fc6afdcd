"""Run every benchmark module (or those named) and print one table of results."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Each module exposes `run(quick: bool) -> list[Row]`.
MODULES = [
    "sync",
    "webhooks",
    "inbound",
    "pacing",
    "outages",
    "workspace",
    "batch",
    "people",
    "inbox",
]


@dataclass
class Row:
    """One measured figure next to the target it must reach."""

    area: str
    metric: str
    value: str
    target: str
    ok: bool


def machine() -> str:
    import os

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


class LoadWatch:
    """Samples the 1-minute load average while the benchmarks run: figures measured on a busy
    machine are not comparable with those of an idle one, so the table says which it was."""

    def __init__(self, every: float = 5.0) -> None:
        import os

        self.start = os.getloadavg()[0]
        self.peak = self.start
        self.stop = threading.Event()
        self.every = every
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import os

        while not self.stop.wait(self.every):
            self.peak = max(self.peak, os.getloadavg()[0])

    def summary(self) -> str:
        self.stop.set()
        return f"load average (1 min) {self.start:.2f} at start, at most {self.peak:.2f}"


def print_table(rows: list[Row]) -> None:
    headers = ["area", "metric", "value", "target", "ok"]
    cells = [[r.area, r.metric, r.value, r.target, "yes" if r.ok else "NO"] for r in rows]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("only", nargs="*", help=f"modules to run (default: {' '.join(MODULES)})")
    parser.add_argument("--quick", action="store_true", help="smaller data sets, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.monotonic()
    load = LoadWatch()
    for name in args.only or MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run(quick=args.quick))
    print(f"\nmachine: {machine()}; total {time.monotonic() - started:.0f} s; {load.summary()}\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
