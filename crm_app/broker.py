"""Celery's Redis transport with one outage fix: a closed connection is a connection error.

When Redis dies under a busy worker, Celery closes the broken connection (kombu sets the
transport's ``client`` to None) while tasks are still running. Anything that later touches a
channel of that connection — the acknowledgement of a task that finishes, the return of an
unfinished message when the channel is closed — asks kombu for a new Redis client, and kombu
5.7 builds its parameters from ``connection.client.hostname``: ``AttributeError: 'NoneType'
object has no attribute 'hostname'``. Celery treats that as a bug and the whole worker exits.
Raised as Redis's ``ConnectionError`` instead, Celery treats it as the broker outage it is:
the consumer reconnects, the unacknowledged message comes back after the visibility timeout
(or at once on restore), and our tasks are idempotent, so running it again is harmless.

A second problem has the same cause: a message a worker had taken when Redis died waits for
the visibility timeout (hours) before it is delivered again. ``RestoreAfterBrokerRestart``
puts such messages back as soon as the worker reconnects.

Both are selected in ``crm_app/celery_setup.py`` whenever REDIS_URL is set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection was closed (Redis went away); reconnecting"
            )
        parent: Any = super()
        return parent._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def restore_orphans(connection: Any) -> int:
    """Return to their queues the messages Redis still lists as delivered before it restarted.

    A message a worker had taken but not acknowledged when Redis died stays in kombu's
    ``unacked`` hash: the worker could not give it back (Redis was gone) and its channel is dead,
    so kombu would only restore it after the visibility timeout (hours). Anything delivered
    before the Redis server started cannot belong to a live channel, so it is safe to restore
    at once; our tasks are idempotent, so one that did finish meanwhile only runs again as a
    no-op. Concurrent workers doing this restore each message once (kombu moves it under a
    WATCH on the hash).
    """
    opened = connection.default_channel
    if not isinstance(opened, Channel):
        return 0
    channel: Any = opened
    client = channel._create_client()
    try:
        started = time.time() - float(client.info("server")["uptime_in_seconds"])
        tags = client.zrangebyscore(channel.unacked_index_key, 0, started - 1)
        for tag in tags:
            channel.qos.restore_by_tag(tag, client)
    finally:
        client.close()
    if tags:
        logger.warning("restored %d message(s) stranded by a Redis restart", len(tags))
    return len(tags)


class RestoreAfterBrokerRestart(bootsteps.StartStopStep):
    """Consumer step: after every (re)connection, restore what a Redis restart stranded."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        try:
            restore_orphans(c.connection)
        except Exception as exc:  # never keep the worker from consuming
            logger.warning("could not restore stranded messages: %s", type(exc).__name__)
