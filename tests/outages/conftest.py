"""One deployment for the whole outage suite: its own PostgreSQL and Redis, gunicorn, a Celery
worker with embedded beat, and the amoCRM sandbox over HTTP, all on free ports.

The intervals that heal outages (takeover, sweeps, watchdog) are shortened through the
environment, exactly as an operator would set them; the assertions are the production ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.outages import stack
from tests.outages.stack import Deployment

pytestmark = [pytest.mark.worker, pytest.mark.slow]

# What the deployment is told (the defaults are minutes; see docs/deployment.md "Outages").
INTERVALS = {
    "SYNC_STALE_SECONDS": "6",
    "SYNC_HEARTBEAT_SECONDS": "1",
    "SYNC_TAKEOVER_INTERVAL_SECONDS": "2",
    "INBOUND_SWEEP_SECONDS": "2",
    "WEBHOOK_DRAIN_SECONDS": "2",
    "WEBHOOK_WATCHDOG_SECONDS": "3",
    "WEBHOOK_SPOOL_SWEEP_SECONDS": "0.5",
    "SYNC_INTERVAL_SECONDS": "86400",
    "RECONCILE_INTERVAL_SECONDS": "86400",
    "INBOUND_RETRY_BASE_SECONDS": "1",
}


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # 5 min of amoCRM's retry ladder pass in 0.5 s; the disable threshold is lowered by the
    # watchdog test only.
    with stack.deployment(
        tmp_path_factory.mktemp("outages"), INTERVALS,
        contacts=1500, leads=300, tasks=150, webhook_time_scale=1 / 600,
    ) as dep:  # fmt: skip
        yield dep


@pytest.fixture
def healthy(deployment: Deployment) -> Iterator[Deployment]:
    """Every test starts and ends with both servers up and the original processes alive."""
    if not deployment.pg.running():
        deployment.pg.start()
    if deployment.redis.proc is None or deployment.redis.proc.poll() is not None:
        deployment.redis.start()
    pids = deployment.pids()
    yield deployment
    deployment.assert_alive(pids)


def wait_run(dep: Deployment, run_id: int, timeout: float) -> Any:
    return dep.wait_run(run_id, timeout)


def mirror_matches(dep: Deployment, entity: str) -> bool:
    return dep.mirror_matches(entity)
