"""Token buckets in Redis, shared by every replica: one Lua script per check, on Redis's
own clock (replicas' clocks never meet), each bucket a hash with a TTL."""

from __future__ import annotations

import logging
import time
from typing import Any

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


class RedisLimiter:
    def __init__(self, client: Any) -> None:
        self._take = client.register_script(_TAKE)
        self._warned_at = -WARN_EVERY_S

    async def take(self, key: str, rate_per_s: float, burst: int) -> int:
        try:
            return int(await self._take(keys=[f"limit:{key}"], args=[rate_per_s, burst]))
        except Exception as exc:  # Redis away: allow (limits must not take the service down)
            if time.monotonic() - self._warned_at > WARN_EVERY_S:  # once, not per frame
                self._warned_at = time.monotonic()
                log.warning("rate limits unchecked while Redis is away: %r", exc)
            return 0
