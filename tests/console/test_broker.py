"""The broker transport outlives its connection (console/broker.py): what killed workers
on a Redis restart, reproduced with kombu against a real redis-server."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from kombu import Connection, Queue

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
        channel.basic_get("restore-test")
        channel.basic_get("restore-test")  # two tasks running, their messages unacked
        broker.stop()
        connection.collect(socket_timeout=1)  # what Celery does when the broker drops
        # What a forked pool child does after the fork (kombu's after-fork cleanup); the
        # stock transport then fails: 'NoneType' object has no attribute 'hostname'.
        channel._disconnect_pools()
        broker.start()

        channel.qos.restore_unacked()
        channel.qos.ack(1)
        channel.qos.reject(2, requeue=True)
    finally:
        broker.stop()
