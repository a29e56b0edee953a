"""Rate limits are a sliding window: at most `limit` admitted in any `per` seconds, on the
shared Redis (production) and on the embedded default's in-process cache alike — never
twice the limit across a window's edge, whatever the wall clock reads."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from django.core.cache.backends.locmem import LocMemCache

from agents import ratelimit
from agents.policy import RateLimit

pytestmark = pytest.mark.django_db


def admissions(take: Any, limit: RateLimit, seconds: float) -> list[tuple[float, float]]:
    """Try as fast as possible for `seconds`; for each admitted try, the clock just before
    it was asked and just after it answered (its admission lies between)."""
    admitted = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        before = time.monotonic()
        wait = take(limit)
        after = time.monotonic()
        if wait == 0:
            admitted.append((before, after))
        else:
            time.sleep(0.005)
    return admitted


def spans(admitted: list[tuple[float, float]], limit: int) -> list[float]:
    """For each admission, the longest the time to the limit-th admission after it can have
    been (from just before the one was asked to just after the other answered): a sliding
    window keeps every one at least `per`, whatever the answers' delays."""
    return [admitted[i + limit][1] - admitted[i][0] for i in range(len(admitted) - limit)]


def on_redis(limit: RateLimit) -> float:
    return ratelimit.take(7, limit)


def in_process() -> Any:
    """A cache of its own: LocMemCache keeps its entries per name for the whole process, so
    a shared name would carry another test's admissions into this one."""
    cache = LocMemCache(f"rl-{uuid.uuid4().hex}", {})
    return lambda limit: ratelimit._take_here(cache, "rl:7", limit)


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_no_more_than_the_limit_in_any_window_whatever_the_clock(where: str) -> None:
    """Tried without pause over 2.5 windows of one second: a fixed window (the clock's
    seconds) admits 3 just before a second turns and 3 just after; a sliding one never
    more than 3 in any second: the 4th admission after any one comes a second later."""
    limit = RateLimit(tool="test.*", limit=3, per=1)
    take = on_redis if where == "redis" else in_process()
    admitted = admissions(take, limit, 2.5)
    assert len(admitted) >= 6, admitted  # the window moved on: it admits again
    assert min(spans(admitted, 3)) >= 1.0, spans(admitted, 3)


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_a_refused_action_learns_when_one_more_may_go(where: str) -> None:
    limit = RateLimit(tool="test.*", limit=1, per=2)
    take = on_redis if where == "redis" else in_process()
    assert take(limit) == 0
    wait = take(limit)
    # The one admitted ages out two seconds after it was admitted: less than that now.
    assert 0 < wait <= 2
    time.sleep(wait)
    assert take(limit) == 0


def test_concurrent_workers_never_take_more_than_the_limit() -> None:
    """Eight threads (each its own Redis connection) at once against a limit of 5 an
    hour: exactly 5 admitted, not one more (the check and the add are one atomic step)."""
    limit = RateLimit(tool="test.*", limit=5, per=3600)
    results: list[float] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(4):
            results.append(ratelimit.take(8, limit))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in results if r == 0) == 5, results
    assert all(0 < r <= 3600 for r in results if r), results


def test_each_agent_and_rule_counts_apart() -> None:
    hourly = RateLimit(tool="payments.*", limit=1, per=3600)
    assert ratelimit.take(1, hourly) == 0
    assert ratelimit.take(1, hourly) > 0
    assert ratelimit.take(2, hourly) == 0  # another agent
    assert ratelimit.take(1, RateLimit(tool="email.*", limit=1, per=3600)) == 0  # another rule
