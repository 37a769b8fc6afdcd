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

Selected by ``broker_transport`` in ``crm_app/celery_setup.py`` whenever REDIS_URL is set.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


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
