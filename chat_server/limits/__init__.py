"""Rate limits that hold across replicas: token buckets keyed by user, connection or IP.

Backends: ``memory.py`` (one process) and ``redis.py`` (replicas share the buckets; one
Lua script per check, on Redis's clock). Hand-written rather than the ``limits`` library:
its async Redis support needs ``coredis`` or its own storage wrappers, a second Redis
client next to the redis-py one the server already keeps healthy, and a bucket is a
dozen lines of Lua.

Contract: ``take(key, rate_per_s, burst)`` spends one token from the bucket ``key``
(capacity ``burst``, refilled at ``rate_per_s``) and returns 0 when it had one, else how
many milliseconds until it will. A bucket unused for a while is forgotten (TTL).

``hold(key, holder, most)`` counts things that stay open (a user's connections): it
gives ``holder`` one of ``most`` places under ``key`` (True), or none when all are held
(False). ``release`` gives the place back; ``renew`` keeps places alive, and a place not
renewed for ``HOLD_TTL_S`` (its replica died) is free again.

With Redis away a limiter allows (fails open): limits protect the service, they must
not take it down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

HOLD_TTL_S = 30.0  # a held place not renewed this long is free (app.py renews every 10 s)


class Limiter(Protocol):
    async def take(self, key: str, rate_per_s: float, burst: int) -> int: ...

    async def hold(self, key: str, holder: str, most: int) -> bool: ...

    async def release(self, key: str, holder: str) -> None: ...

    async def renew(self, held: Iterable[tuple[str, str]]) -> None: ...


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
        self._held: dict[str, dict[str, float]] = {}  # key → holder → expiry (ms)

    async def take(self, key: str, rate_per_s: float, burst: int) -> int:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens, wait = refill(tokens, last, now, rate_per_s, burst)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # bounded: forget the oldest
            self._buckets.pop(next(iter(self._buckets)))
        return wait

    async def hold(self, key: str, holder: str, most: int) -> bool:
        now = self._clock()
        places = self._held.setdefault(key, {})
        for gone in [h for h, expiry in places.items() if expiry <= now]:
            del places[gone]
        if holder not in places and len(places) >= most:
            return False
        places[holder] = now + HOLD_TTL_S * 1000
        return True

    async def release(self, key: str, holder: str) -> None:
        places = self._held.get(key)
        if places is not None:
            places.pop(holder, None)
            if not places:
                del self._held[key]

    async def renew(self, held: Iterable[tuple[str, str]]) -> None:
        expiry = self._clock() + HOLD_TTL_S * 1000
        for key, holder in held:
            places = self._held.get(key)
            if places is not None and holder in places:
                places[holder] = expiry


class Unlimited:
    """``LIMITS=off``: every check passes, at no cost."""

    async def take(self, key: str, rate_per_s: float, burst: int) -> int:
        return 0

    async def hold(self, key: str, holder: str, most: int) -> bool:
        return True

    async def release(self, key: str, holder: str) -> None:
        return None

    async def renew(self, held: Iterable[tuple[str, str]]) -> None:
        return None
