"""Token buckets and held places in Redis, shared by every replica: one Lua script per
check, on Redis's own clock (replicas' clocks never meet). A bucket is a hash with a
TTL; the places under a key are a sorted set of holders scored by expiry."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from chat_server.limits import HOLD_TTL_S

log = logging.getLogger(__name__)

WARN_EVERY_S = 30.0

# KEYS[1] the bucket; ARGV rate per second, burst. Returns the wait in ms (0: allowed).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) * 1000 / rate))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


# KEYS[1] the places; ARGV holder, most, ttl ms. Returns 1 (holds a place) or 0 (full).
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"""

# KEYS the places; ARGV[1] ttl ms, then one holder per key. Only places still held.
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', key, tonumber(ARGV[1]))
  end
end
return #KEYS
"""


class RedisLimiter:
    def __init__(self, client: Any) -> None:
        self._r = client
        self._take = client.register_script(_TAKE)
        self._hold = client.register_script(_HOLD)
        self._renew = client.register_script(_RENEW)
        self._ttl_ms = int(HOLD_TTL_S * 1000)
        self._warned_at = -WARN_EVERY_S

    async def take(self, key: str, rate_per_s: float, burst: int) -> int:
        try:
            return int(await self._take(keys=[f"limit:{key}"], args=[rate_per_s, burst]))
        except Exception as exc:  # Redis away: allow (limits must not take the service down)
            self._unchecked(exc)
            return 0

    async def hold(self, key: str, holder: str, most: int) -> bool:
        try:
            return bool(await self._hold(keys=[f"held:{key}"], args=[holder, most, self._ttl_ms]))
        except Exception as exc:  # Redis away: allow, as for rates
            self._unchecked(exc)
            return True

    async def release(self, key: str, holder: str) -> None:
        try:
            await self._r.zrem(f"held:{key}", holder)
        except Exception as exc:  # the place expires with its TTL
            self._unchecked(exc)

    async def renew(self, held: Iterable[tuple[str, str]]) -> None:
        pairs = list(held)
        for start in range(0, len(pairs), 500):  # bounded script calls
            part = pairs[start : start + 500]
            try:
                await self._renew(
                    keys=[f"held:{key}" for key, _ in part],
                    args=[self._ttl_ms, *(holder for _, holder in part)],
                )
            except Exception as exc:  # places live on until their TTL
                self._unchecked(exc)
                return

    def _unchecked(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > WARN_EVERY_S:  # once, not per frame
            self._warned_at = time.monotonic()
            log.warning("limits unchecked while Redis is away: %r", exc)
