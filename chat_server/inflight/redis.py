"""In-flight state in Redis, shared by every replica. Every key has a TTL.

Keys (``{t}`` a turn id, ``{c}`` a conversation id):
  inflight:{t}        hash  conv, node, start (the turn_start frame)     TTL ttl_s
  inflight:{t}:text   string, APPENDed by the owner                     TTL ttl_s
  inflight:{t}:lease  string node, renewed by the owner                 TTL lease_ms
  inflight:conv:{c}   set of turn ids streaming in the conversation     TTL ttl_s
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis

from chat_server.inflight import InflightTurn


class RedisInflight:
    def __init__(self, client: aioredis.Redis, *, lease_ms: int, ttl_s: int = 3600) -> None:
        self._r = client
        self._lease_ms = lease_ms
        self._ttl_s = ttl_s

    async def begin(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str
    ) -> None:
        await self.restore(turn_id, conversation_id, start, node, "")

    async def restore(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str, text: str
    ) -> None:
        key, conv_key = f"inflight:{turn_id}", f"inflight:conv:{conversation_id}"
        async with self._r.pipeline(transaction=True) as p:
            p.hset(key, mapping={"conv": str(conversation_id), "node": node, "start": start})
            p.expire(key, self._ttl_s)
            p.set(f"{key}:text", text.encode(), ex=self._ttl_s)
            p.set(f"{key}:lease", node, px=self._lease_ms)
            p.sadd(conv_key, str(turn_id))
            p.expire(conv_key, self._ttl_s)
            await p.execute()

    async def append(self, turn_id: uuid.UUID, text: str) -> None:
        await self._r.append(f"inflight:{turn_id}:text", text.encode())

    async def renew(self, turn_ids: Iterable[uuid.UUID], node: str) -> list[uuid.UUID]:
        # SET, not PEXPIRE: after a Redis restart the lease key is gone, and PEXPIRE of a
        # missing key does nothing, so every live reply looked dead to the sweepers.
        ids = list(turn_ids)
        async with self._r.pipeline(transaction=False) as p:
            for turn_id in ids:
                p.set(f"inflight:{turn_id}:lease", node, px=self._lease_ms)
                p.exists(f"inflight:{turn_id}", f"inflight:{turn_id}:text")
            replies = await p.execute()
        return [turn_id for turn_id, found in zip(ids, replies[1::2], strict=True) if found < 2]

    async def lease_alive(self, turn_id: uuid.UUID) -> bool:
        return bool(await self._r.exists(f"inflight:{turn_id}:lease"))

    async def get(self, turn_id: uuid.UUID) -> InflightTurn | None:
        async with self._r.pipeline(transaction=True) as p:
            p.hgetall(f"inflight:{turn_id}")
            p.get(f"inflight:{turn_id}:text")
            meta, text = await p.execute()
        if not meta:
            return None
        return InflightTurn(
            turn_id=turn_id,
            conversation_id=uuid.UUID(meta[b"conv"].decode()),
            start=meta[b"start"],
            text=bytes(text or b"").decode(errors="replace"),
            node=meta[b"node"].decode(),
        )

    async def active(self, conversation_id: uuid.UUID) -> list[InflightTurn]:
        ids = await self._r.smembers(f"inflight:conv:{conversation_id}")
        turns = []
        for raw in sorted(ids):
            turn = await self.get(uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw))
            if turn is None:  # expired without end(): its replica died; forget it
                await self._r.srem(f"inflight:conv:{conversation_id}", raw)
            else:
                turns.append(turn)
        return turns

    async def end(self, turn_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        async with self._r.pipeline(transaction=True) as p:
            p.delete(f"inflight:{turn_id}", f"inflight:{turn_id}:text", f"inflight:{turn_id}:lease")
            p.srem(f"inflight:conv:{conversation_id}", str(turn_id))
            await p.execute()
