"""The broker transport turns kombu's closed-connection AttributeError into a connection error."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection, Queue
from kombu.message import Message
from kombu.transport import redis as kombu_redis

from tests.outages.conftest import Deployment

pytestmark = [pytest.mark.worker]


def _left_behind(url: str, transport: str | None) -> Message:
    """An unacknowledged message whose channel outlived its closed connection.

    This is the state a Redis outage leaves in a busy worker: Celery closes the broken
    connection (kombu detaches the transport and drops the channel's pools) while a task still
    runs; its acknowledgement or the return of the message then asks for a new Redis client.
    """
    conn = Connection(url, transport=transport) if transport else Connection(url)
    channel: Any = conn.channel()
    queue = Queue("outage-transport-check")
    conn.Producer(channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
    got: list[Message] = []
    conn.Consumer(queue, callbacks=[lambda body, msg: got.append(msg)], channel=channel).consume()
    conn.drain_events(timeout=5)
    # The message stays unacknowledged on purpose; kombu would try to return it at interpreter
    # exit through this broken channel and print the very AttributeError tested here.
    channel.qos.restore_at_shutdown = False
    channel._pool = None  # dropped by Channel.close()
    channel.connection.client = None  # detached by Connection.close()
    return got[0]


def test_stock_kombu_raises_attribute_error(healthy: Deployment) -> None:
    message = _left_behind(healthy.redis.url, None)
    with pytest.raises(AttributeError, match="hostname"):
        message.ack()


def test_our_transport_raises_a_connection_error(healthy: Deployment) -> None:
    message = _left_behind(healthy.redis.url, "crm_app.broker:Transport")
    with pytest.raises(redis.exceptions.ConnectionError):
        message.ack()
    # ...which kombu lists among the errors Celery recovers from by reconnecting.
    assert redis.exceptions.ConnectionError in kombu_redis.Transport.connection_errors or any(
        issubclass(redis.exceptions.ConnectionError, e)
        for e in kombu_redis.Transport.connection_errors
    )


def test_celery_uses_it(healthy: Deployment) -> None:
    celery = healthy.app.extensions["celery"]
    with celery.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "crm_app.broker"


def test_messages_stranded_by_a_redis_restart_are_restored(tmp_path) -> None:
    """Taken by a worker, then Redis died: back in the queue at reconnect, not hours later."""
    import time

    from crm_app.broker import restore_orphans
    from tests.outages.stack import Redis

    server = Redis(tmp_path).start()
    try:
        url = server.url
        conn = Connection(url, transport="crm_app.broker:Transport")
        channel: Any = conn.channel()
        queue = Queue("outage-stranded")
        conn.Producer(channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        taken: list[object] = []
        conn.Consumer(queue, callbacks=[lambda b, m: taken.append(m)], channel=channel).consume()
        conn.drain_events(timeout=5)
        assert len(taken) == 1
        server.kill()
        # The unacked entry must predate the new server's start by a second (uptime is whole
        # seconds); twice that absorbs a busy machine's scheduling.
        time.sleep(2.1)
        server.start()
        time.sleep(1.1)
        fresh = Connection(url, transport="crm_app.broker:Transport")
        assert restore_orphans(fresh) == 1
        again: list[object] = []
        other: Any = fresh.channel()
        fresh.Consumer(queue, callbacks=[lambda b, m: again.append(m)], channel=other).consume()
        fresh.drain_events(timeout=5)
        assert len(again) == 1  # delivered once more...
        assert restore_orphans(fresh) == 0  # ...and only once
        # Both channels hold their message unacknowledged by design: no return at exit, when
        # this test's Redis is gone.
        channel.qos.restore_at_shutdown = other.qos.restore_at_shutdown = False
    finally:
        server.close()
