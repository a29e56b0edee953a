"""The broker transport outlives its connection (console/broker.py): what killed workers
on a Redis restart, reproduced with kombu against a real redis-server."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from kombu import Connection, Queue
from kombu.transport import redis as kombu_redis

from tests.conftest import free_port
from tests.support.private_redis import PrivateRedis


def test_restoring_the_messages_of_a_collected_connection_does_not_raise(
    tmp_path: Path,
) -> None:
    broker = PrivateRedis(free_port(), tmp_path).start()
    try:
        # The transport the settings give Celery (CELERY_BROKER_TRANSPORT).
        connection = Connection(broker.url, transport=settings.CELERY_BROKER_TRANSPORT)
        queue = Queue("restore-test", routing_key="restore-test")
        with connection.Producer() as producer:
            for i in range(2):
                producer.publish({"n": i}, routing_key="restore-test", declare=[queue])
        channel = connection.default_channel
        assert isinstance(channel, kombu_redis.Channel)  # console.broker's, a Redis channel
        first = channel.basic_get("restore-test")
        second = channel.basic_get("restore-test")  # two tasks running, their messages unacked
        assert first is not None and first.delivery_tag is not None
        assert second is not None and second.delivery_tag is not None
        broker.stop()
        connection.collect(socket_timeout=1)  # what Celery does when the broker drops
        # What a forked pool child does after the fork (kombu's after-fork cleanup); the
        # stock transport then fails: 'NoneType' object has no attribute 'hostname'.
        channel._disconnect_pools()  # type: ignore[attr-defined]  # private: not in kombu-stubs
        broker.start()

        channel.qos.restore_unacked()
        channel.qos.ack(first.delivery_tag)
        channel.qos.reject(second.delivery_tag, requeue=True)
    finally:
        broker.stop()
