"""Rate limits per agent and rule: at most `limit` actions admitted in any `per` seconds.

A sliding window, not a fixed one: with windows fixed to the clock, "1 per 2 s" admitted a
call at 11.99 s and another at 12.01 s (a new window), twice the limit in 20 ms. Here each
admitted action's time is kept in a log per agent and rule; an action is admitted when
fewer than `limit` lie within the last `per` seconds, and a refused one learns when the
oldest of them ages out.

The log lives in the shared cache: on Redis (production) one server-side script a check —
read, trim, count and add in one atomic step on Redis's own clock — so every worker counts
against the same log and two workers never both take the last place; with the embedded
default's in-process cache, read and written under this process's lock (there is one
process: the lock does not reach across processes, which only Redis is set up to serve)."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

from agents.policy import RateLimit

# KEYS[1]: the log (a sorted set: member a unique token, score the admission time).
# ARGV: per (seconds), limit, token. Returns "0" when admitted, else the seconds until
# the oldest admission in the window ages out, as text (Lua numbers come back as integers).
_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local per, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(per * 1000) + 1000)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + per - now)
"""

# A refused action waits at least this long (the oldest admission may age out at once).
MIN_WAIT = 0.05

_local_lock = threading.Lock()


def take(agent_id: int, limit: RateLimit) -> float:
    """Count one action against the last `limit.per` seconds; return 0 if admitted, else
    the seconds until one more may be."""
    cache = caches["default"]
    name = f"rl:{agent_id}:{limit.tool}:{limit.per}"
    if isinstance(cache, RedisCache):
        key = cache.make_and_validate_key(name)
        # The backend's own client (its pool, its server for this key): Django's cache API
        # has no atomic read-trim-add, so the script runs on the client it holds.
        client = cache._cache.get_client(key, write=True)
        answer: Any = client.eval(_SCRIPT, 1, key, limit.per, limit.limit, secrets.token_hex(8))
        wait = float(answer)
    else:
        wait = _take_here(cache, name, limit)
    return 0.0 if wait <= 0 else max(wait, MIN_WAIT)


def _take_here(cache: Any, name: str, limit: RateLimit) -> float:
    with _local_lock:
        now = time.time()
        log = [at for at in cache.get(name, ()) if at > now - limit.per]
        if len(log) < limit.limit:
            cache.set(name, [*log, now], timeout=limit.per + 1)
            return 0.0
        return min(log) + limit.per - now
