"""Rate limits that hold across replicas: token buckets keyed by user, connection or IP.

Backends: ``memory.py`` (one process) and ``redis.py`` (replicas share the buckets; one
Lua script per check, on Redis's clock). Hand-written rather than the ``limits`` library:
its async Redis support needs ``coredis`` or its own storage wrappers, a second Redis
client next to the redis-py one the server already keeps healthy, and a bucket is a
dozen lines of Lua.

Contract: ``take(key, rate_per_s, burst)`` spends one token from the bucket ``key``
(capacity ``burst``, refilled at ``rate_per_s``) and returns 0 when it had one, else how
many milliseconds until it will. A bucket unused for a while is forgotten (TTL). With
Redis away a limiter allows (fails open): limits protect the service, they must not
take it down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Limiter(Protocol):
    async def take(self, key: str, rate_per_s: float, burst: int) -> int: ...


def refill(
    tokens: float, last_ms: float, now_ms: float, rate_per_s: float, burst: int
) -> tuple[float, int]:
    """Pure: the bucket after spending one token at ``now_ms`` (its new tokens) and the
    wait in ms (0 when the token was there)."""
    tokens = min(float(burst), tokens + (now_ms - last_ms) * rate_per_s / 1000)
    if tokens >= 1:
        return tokens - 1, 0
    return tokens, max(1, int((1 - tokens) * 1000 / rate_per_s + 0.999))


class MemoryLimiter:
    """Buckets of one process. ``clock`` (ms) is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = lambda: time.monotonic() * 1000) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str, rate_per_s: float, burst: int) -> int:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens, wait = refill(tokens, last, now, rate_per_s, burst)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # bounded: forget the oldest
            self._buckets.pop(next(iter(self._buckets)))
        return wait
