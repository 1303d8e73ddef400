"""Presence in Redis: ``presence:{conversation}`` is a sorted set of
``session_id|user_id`` scored by expiry time (ms); the key itself has a TTL too."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis

from chat_server.presence import PRESENCE_TTL_S, Device


class RedisPresence:
    def __init__(self, client: aioredis.Redis, ttl_s: float = PRESENCE_TTL_S) -> None:
        self._r = client
        self._ttl_ms = int(ttl_s * 1000)

    @staticmethod
    def _key(conversation_id: uuid.UUID) -> str:
        return f"presence:{conversation_id}"

    async def enter(self, conversation_id: uuid.UUID, device: Device) -> None:
        await self.refresh([(conversation_id, device)])

    async def leave(self, conversation_id: uuid.UUID, device: Device) -> None:
        await self._r.zrem(self._key(conversation_id), f"{device.session_id}|{device.user_id}")

    async def refresh(self, entries: Iterable[tuple[uuid.UUID, Device]]) -> None:
        expiry = int(time.time() * 1000) + self._ttl_ms
        async with self._r.pipeline(transaction=False) as p:
            for conversation_id, device in entries:
                key = self._key(conversation_id)
                p.zadd(key, {f"{device.session_id}|{device.user_id}": expiry})
                p.pexpire(key, self._ttl_ms)
            await p.execute()

    async def members(self, conversation_id: uuid.UUID) -> list[Device]:
        key = self._key(conversation_id)
        now = int(time.time() * 1000)
        async with self._r.pipeline(transaction=True) as p:
            p.zremrangebyscore(key, "-inf", now)
            p.zrange(key, 0, -1)
            _, raw = await p.execute()
        devices = []
        for item in raw:
            session_id, _, user_id = item.decode().partition("|")
            devices.append(Device(session_id, user_id))
        return sorted(devices, key=lambda d: (d.user_id, d.session_id))
