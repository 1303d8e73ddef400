"""Limits: the token bucket (pure, memory, and Redis shared by replicas), and each limit
at its threshold over real WebSockets: turns per minute, frames per second (and the
close of a client that keeps flooding), handshakes per IP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
import websockets

from chat_server.limits import MemoryLimiter, refill
from chat_server.limits.redis import RedisLimiter
from load.spawn import EmbeddedRedis
from protocol.errors import CloseCode
from protocol.messages import Ack, Error, Ping, Pong, Send, TurnEnd
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user

pytestmark = pytest.mark.asyncio


async def test_a_bucket_spends_refills_and_says_how_long_to_wait() -> None:
    tokens, wait = refill(1.0, 0, 0, rate_per_s=2, burst=3)
    assert (tokens, wait) == (0.0, 0)
    tokens, wait = refill(tokens, 0, 250, rate_per_s=2, burst=3)  # half a token back
    assert (tokens, wait) == (0.5, 250)
    tokens, wait = refill(tokens, 250, 10_000, rate_per_s=2, burst=3)  # capped at burst
    assert (tokens, wait) == (2.0, 0)


async def test_the_memory_limiter_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    assert [await limiter.take("k", 1, 3) for _ in range(4)] == [0, 0, 0, 1000]
    assert await limiter.take("other", 1, 3) == 0, "buckets are per key"
    now[0] = 1000
    assert await limiter.take("k", 1, 3) == 0


async def test_replicas_share_one_bucket_in_redis(redis_server: EmbeddedRedis) -> None:
    a_client = aioredis.Redis.from_url(redis_server.url)
    b_client = aioredis.Redis.from_url(redis_server.url)
    a, b = RedisLimiter(a_client), RedisLimiter(b_client)
    waits = [await (a if i % 2 else b).take("user:1", 0.5, 4) for i in range(6)]
    assert waits[:4] == [0, 0, 0, 0]
    assert all(1000 < w <= 2000 for w in waits[4:]), waits  # one token per 2 s, shared
    assert await a_client.pttl("limit:user:1") > 0, "every bucket expires"
    await a_client.aclose()
    await b_client.aclose()


async def test_a_user_over_the_turn_rate_gets_rate_limited_and_stays_connected(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(turns_per_minute=2)
    client = await Client.connect(running.ws)
    await client.hello(new_user())
    cid = await client.create()
    for n in range(2):
        await client.send(Send(id=f"t{n}", conversation_id=cid, text="hi"))
        await client.expect(Ack)
        await client.until(TurnEnd)
    await client.send(Send(id="t2", conversation_id=cid, text="one more"))
    refused = await client.expect(Error)
    assert (refused.id, refused.code, refused.retryable) == ("t2", "rate_limited", True)
    assert refused.retry_after_ms is not None
    assert 0 < refused.retry_after_ms <= 30_000
    await client.send(Ping(id="p"))
    assert (await client.expect(Pong)).id == "p", "the connection stays open"
    await client.close()


async def test_frames_over_the_rate_are_refused_and_a_flood_is_closed_4004(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(frames_per_second=5)
    client = await Client.connect(running.ws)
    await client.hello(new_user())
    for n in range(12):  # burst 10 (the hello took one)
        await client.send(Ping(id=f"p{n}"))
    frames = [await client.recv() for _ in range(12)]
    refused = [f for f in frames if isinstance(f, Error)]
    assert refused, "frames over the burst are answered rate_limited"
    assert all(f.code == "rate_limited" and f.retry_after_ms for f in refused)
    for n in range(40):  # keeps flooding
        await client.send(Ping(id=f"q{n}"))
    assert await client.closed_with() == CloseCode.FLOODING == 4004


async def test_handshakes_over_the_per_ip_rate_get_429(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(handshakes_per_ip_per_s=1)
    opened = [await websockets.connect(running.ws) for _ in range(10)]  # the burst
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(running.ws)
    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    await asyncio.gather(*(ws.close() for ws in opened))


async def test_a_user_with_too_many_replies_streaming_is_rate_limited(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(concurrent_replies=1)
    client = await Client.connect(running.ws)
    await client.hello(new_user())
    first, second = await client.create(), await client.create()
    slow = "long " + directive(tps=20, tokens=40)
    await client.send(Send(id="a", conversation_id=first, text=slow))
    await client.expect(Ack)
    await client.send(Send(id="b", conversation_id=second, text="meanwhile"))
    refused, _ = await client.until(Error)
    assert (refused.id, refused.code, refused.retry_after_ms) == ("b", "rate_limited", 1000)
    await client.until(TurnEnd)  # the first reply ends: room for another
    await client.send(Send(id="b", conversation_id=second, text="meanwhile"))
    await client.until(Ack)
    await client.close()
