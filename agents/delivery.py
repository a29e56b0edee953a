"""Which runs still have their task message in the broker.

The sweep re-enqueues a queued run only when its message is gone (lost with a broker
restart, or never sent because the broker was away at commit), not merely because it has
waited: a long backlog is not a lost one, and re-sending every waiting run multiplied the
deliveries. On the Redis broker a `run_execute` message is either waiting in the queue's
list or delivered to a worker and not yet acknowledged (kombu's `unacked` hash, which also
holds countdown messages a worker keeps until they are due). Other brokers (the embedded
in-memory one) cannot be read this way: there every waiting run counts as gone, and a
duplicate is harmless because runs replay.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from typing import Any

from celery import current_app

log = logging.getLogger(__name__)

TASK = "agents.run_execute"  # the name runs are sent and found under (agents.tasks)


def _run_id(raw: Any) -> int | None:
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        if message.get("headers", {}).get("task") != TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def runs_with_messages(run_ids: Iterable[int]) -> set[int] | None:
    """The runs among `run_ids` whose message is in the broker; None where the broker
    cannot say (then the caller treats every message as gone)."""
    app = current_app
    wanted = set(run_ids)
    if not wanted or not str(app.conf.broker_url).startswith("redis://"):
        return None
    queue = app.conf.task_default_queue
    options = app.conf.broker_transport_options or {}
    with app.connection_for_read() as connection:
        # The Redis channel's own client (kombu's StdChannel type does not declare it).
        client = connection.default_channel.client  # type: ignore[attr-defined]
        waiting = client.lrange(queue, 0, -1)
        delivered = client.hvals(options.get("unacked_key", "unacked"))
    present = {_run_id(raw) for raw in [*waiting, *delivered]}
    return wanted & {pk for pk in present if pk is not None}
