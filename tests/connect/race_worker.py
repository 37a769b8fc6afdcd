"""Child process of the refresh-race test: N threads call amoCRM at once through client_for_owner.

Usage: python race_worker.py OWNER_ID THREADS GO_FILE. Prints READY, waits for GO_FILE, then
prints a JSON line {"ok": n, "errors": [...]}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    owner_id, threads, go_file = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    from crm_app import create_app
    from crm_app.services.amo import client_for_owner

    app = create_app()
    barrier = threading.Barrier(threads)
    results: list[str | None] = []
    lock = threading.Lock()

    def call() -> None:
        with app.app_context():
            barrier.wait()
            try:
                client_for_owner(owner_id).get_account()
                outcome = None
            except Exception as exc:  # reported to the parent, which fails the test
                outcome = f"{type(exc).__name__}: {exc}"
            with lock:
                results.append(outcome)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    print("READY", flush=True)
    deadline = time.monotonic() + 60
    while not go_file.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    errors = [r for r in results if r is not None]
    print(json.dumps({"ok": len(results) - len(errors), "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
