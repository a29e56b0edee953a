"""The Celery broker transport: kombu's Redis transport, made safe to outlive its connection.

Why. When the broker restarts under a busy worker, Celery collects the broken connection
(kombu sets the transport's `client` to None and drops the channel's connection pools),
while the channel's QoS still holds the messages delivered to tasks that are running. A
later restore of those messages — at the channel's close, at a forked pool child's exit
(its multiprocessing finaliser), or through a reject — asks the dead transport for a new
pool, and kombu fails in `_connparams` with `'NoneType' object has no attribute
'hostname'` (the traceback of celery/kombu#970); raised in the worker's event loop, that
ends the whole worker. An ack of such a message fails the same way.

What instead. On a channel whose connection is gone, the QoS forgets those messages
rather than reaching for the broker: they stay in the broker's `unacked` hash (restored
after the visibility timeout) or died with the broker. Nothing is lost either way: Postgres
holds every run, and the sweep re-enqueues runs whose message is gone (agents.delivery).
Where the broker is merely unreachable during a restore, the restore is logged and given
up for the same reason.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def _orphaned(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return transport is None or getattr(transport, "client", None) is None

    def _forget(self, why: str) -> None:
        delivered = self._delivered
        if not delivered:
            return
        log.warning(
            "broker: %d unacknowledged message(s) not restored (%s); the visibility "
            "timeout and the run sweep hand them on",
            len(delivered),
            why,
        )
        delivered.clear()

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self._orphaned():
            self._forget("the connection is gone")
            return None
        try:
            return super().restore_unacked(client)
        except kombu_redis.Transport.connection_errors as exc:
            self._forget(f"the broker is unreachable: {exc}")
            return None

    def ack(self, delivery_tag: Any) -> None:
        if self._orphaned():
            virtual.QoS.ack(self, delivery_tag)  # forget it here; the broker cannot be told
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._orphaned():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
