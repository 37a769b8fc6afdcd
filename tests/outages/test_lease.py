"""A worker dies mid-sync: its lease expires and a live worker resumes the run from the checkpoint."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import select

from crm_app.models import SyncRun
from tests.outages import stack
from tests.outages.conftest import INTERVALS, Deployment, mirror_matches, wait_run

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_killed_worker_run_is_taken_over_from_its_checkpoint(healthy: Deployment) -> None:
    from crm_app.extensions import db
    from crm_app.services.sync import start_sync

    dep = healthy
    doomed_queue = dep.queue + "-doomed"
    doomed = stack.celery_worker(
        dep.env, doomed_queue, "doomed", dep.base / "doomed.log", beat=False, concurrency=1,
        pool="solo",
    )  # fmt: skip
    dep.extra.append(doomed)
    # Slow contact pages (1 s each) so the kill lands mid-run.
    dep.sandbox("POST", "faults", json={"path": "/api/v4/contacts", "method": "GET",
                                          "status": 200, "delay": 1, "count": 8})  # fmt: skip
    with dep.app.app_context():
        run_id = start_sync(dep.owner_id, full=True, trigger="manual", enqueue=False).id
        db.session.remove()
    dep.app.extensions["celery"].send_task("sync.run", args=[run_id], queue=doomed_queue)

    def mid_run() -> SyncRun | None:
        run = dep.scalar(select(SyncRun).where(SyncRun.id == run_id))
        page = (run.checkpoint or {}).get("contacts", {}).get("page", 0) if run else 0
        return run if run and run.status == "running" and page >= 3 else None

    killed_at = stack.wait_for(mid_run, 60, interval=0.05)
    assert killed_at is not None, "the sync never got going"
    assert killed_at.worker.endswith(f":{doomed.pid}")
    doomed.stop(signal.SIGKILL)
    pages_done = killed_at.checkpoint["contacts"]["page"]
    killed = time.monotonic()

    def taken_over() -> SyncRun | None:
        run = dep.scalar(select(SyncRun).where(SyncRun.id == run_id))
        return run if run and run.worker and not run.worker.endswith(f":{doomed.pid}") else None

    # Silent for SYNC_STALE_SECONDS, then the takeover beat (every 2 s here) re-enqueues it.
    stale = float(INTERVALS["SYNC_STALE_SECONDS"])
    rescued = stack.wait_for(taken_over, stale + 30, interval=0.1)
    assert rescued is not None, "nobody took the run over"
    took = time.monotonic() - killed
    assert stale - 1 <= took
    run = wait_run(dep, run_id, 90)
    assert run is not None and run.status == "success", run and run.error
    assert run.id == run_id  # the same run, resumed, not a new one
    # It went on from the checkpoint: the first contact pages were not fetched again.
    assert rescued.checkpoint["contacts"]["page"] >= pages_done
    for entity in ("contacts", "leads", "tasks"):
        assert mirror_matches(dep, entity), entity
