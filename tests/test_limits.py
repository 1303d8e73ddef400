"""Limits: the token bucket and held places (memory, and Redis shared by replicas), and
each limit at its threshold over real WebSockets, on one replica and across two: turns
per minute, concurrent replies, open connections per user (4005), frames per second
(and the close of a client that keeps flooding), handshakes per IP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from chat_server.limits import HOLD_TTL_S, MemoryLimiter, refill
from chat_server.limits.redis import RedisLimiter
from load.spawn import EmbeddedRedis
from protocol.errors import CloseCode
from protocol.messages import Ack, Error, Hello, Ping, Pong, Send, TurnEnd
from tests.replicas import Replica
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


async def test_held_places_fill_up_free_on_release_and_expire_unless_renewed() -> None:
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    assert [await limiter.hold("u", h, 2) for h in "abc"] == [True, True, False]
    assert await limiter.hold("u", "a", 2), "a holder already in keeps its place"
    assert await limiter.hold("v", "c", 2), "places are per key"
    await limiter.release("u", "a")
    assert await limiter.hold("u", "c", 2)
    now[0] = HOLD_TTL_S * 1000 - 1
    await limiter.renew([("u", "c")])  # b's replica died: only c is renewed
    now[0] = HOLD_TTL_S * 1000 + 1
    assert await limiter.hold("u", "d", 2), "b's place expired"
    assert not await limiter.hold("u", "e", 2), "c's renewed place still counts"


async def test_replicas_share_held_places_in_redis(redis_server: EmbeddedRedis) -> None:
    a_client = aioredis.Redis.from_url(redis_server.url)
    b_client = aioredis.Redis.from_url(redis_server.url)
    a, b = RedisLimiter(a_client), RedisLimiter(b_client)
    assert await a.hold("conn:u", "s1", 2)
    assert await b.hold("conn:u", "s2", 2)
    assert not await a.hold("conn:u", "s3", 2), "two places, held on two replicas"
    assert await b.hold("conn:u", "s2", 2), "idempotent for a holder"
    await b.release("conn:u", "s2")
    assert await a.hold("conn:u", "s3", 2)
    before = await a_client.zscore("held:conn:u", "s1")
    await asyncio.sleep(0.01)
    await a.renew([("conn:u", "s1"), ("conn:u", "gone")])
    assert (await a_client.zscore("held:conn:u", "s1")) > before, "renewed"
    assert await a_client.zscore("held:conn:u", "gone") is None, "renew never adds a place"
    assert 0 < await a_client.pttl("held:conn:u") <= HOLD_TTL_S * 1000
    await a_client.aclose()
    await b_client.aclose()


async def refused_hello(url: str, user: str) -> tuple[int, str]:
    client = await Client.connect(url)
    await client.send(Hello(token=user))
    code = await client.closed_with()
    return code, client.ws.close_reason or ""


async def test_a_user_over_the_open_connections_limit_is_closed_4005_with_a_delay(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(connections_per_user=2)
    user = new_user()
    first, second = await Client.connect(running.ws), await Client.connect(running.ws)
    await first.hello(user)
    await second.hello(user)
    code, reason = await refused_hello(running.ws, user)
    assert code == CloseCode.TOO_MANY_CONNECTIONS == 4005
    assert "retry_after_ms=" in reason
    other = await Client.connect(running.ws)
    await other.hello(new_user())  # another user is not affected
    await first.close()
    third = await Client.connect(running.ws)
    for _ in range(50):  # the place is given back as the first connection's cleanup ends
        try:
            await third.hello(user)
            break
        except Exception:
            await asyncio.sleep(0.1)
            third = await Client.connect(running.ws)
    else:
        pytest.fail("a closed connection's place was never given back")
    for c in (second, third, other):
        await c.close()


async def test_limits_hold_across_two_replicas(
    replicas: Callable[..., list[Replica]],
) -> None:
    a, b = replicas(
        2,
        CONNECTIONS_PER_USER="2",
        TURNS_PER_MINUTE="3",
        CONCURRENT_REPLIES="1",
        HANDSHAKES_PER_IP_PER_S="2",
        REQUESTS_PER_MINUTE="3",
    )
    user = new_user()
    on_a, on_b = await Client.connect(a.ws), await Client.connect(b.ws)
    await on_a.hello(user)
    await on_b.hello(user)
    code, _ = await refused_hello(a.ws, user)
    assert code == 4005, "one place on each replica: the third connection is refused"

    first, second = await on_a.create(), await on_b.create()
    slow = "long " + directive(tps=20, tokens=40)
    await on_a.send(Send(id="a", conversation_id=first, text=slow))
    await on_a.expect(Ack)
    await on_b.send(Send(id="b", conversation_id=second, text="meanwhile"))
    refused, _ = await on_b.until(Error)
    assert (refused.id, refused.code) == ("b", "rate_limited"), "a reply streams on A"
    await on_a.until(TurnEnd)
    await on_b.send(Send(id="c", conversation_id=second, text="now"))
    await on_b.expect(Ack)
    await on_b.until(TurnEnd)
    await on_b.send(Send(id="d", conversation_id=second, text="a third turn"))
    refused, _ = await on_b.until(Error)
    assert (refused.id, refused.code) == ("d", "rate_limited"), "3 a minute (b counted), A + B"
    assert refused.retry_after_ms

    statuses = []
    for replica in (a, b, a, b):
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {user}"}) as http:
            statuses.append((await http.get(f"{replica.http}/api/v1/usage")).status_code)
    assert statuses == [200, 200, 200, 429], "3 REST requests a minute, A + B"

    # Handshakes per IP: a burst of 20 (2/s), shared; this test already used a few.
    opened, status = [], None
    for n in range(25):
        try:
            opened.append(await websockets.connect((a if n % 2 else b).ws))
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            break
    assert status == 429, "the shared bucket ran out before 25 handshakes"
    assert len(opened) <= 20, "one bucket for both: separate ones would allow 40"
    await asyncio.gather(*(ws.close() for ws in opened))
    await on_a.close()
    await on_b.close()


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


async def test_handshakes_over_the_hello_backlog_get_503_until_it_drains(
    start_server: Callable[..., RunningServer],
) -> None:
    """A reconnect storm: past PENDING_HELLOS connections waiting for their hello, new
    handshakes are refused at once (503, Retry-After) instead of accepted and starved."""
    running = start_server(pending_hellos=2)
    waiting = [await websockets.connect(running.ws) for _ in range(2)]  # no hello yet
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(running.ws)
    assert refused.value.response.status_code == 503
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 3

    async def admitted() -> websockets.ClientConnection:
        for _ in range(100):  # the server frees the place right after, on its own loop
            try:
                return await websockets.connect(running.ws)
            except websockets.InvalidStatus:
                await asyncio.sleep(0.02)
        raise AssertionError("never admitted")

    client = Client(waiting[0])
    await client.hello(new_user())  # one says hello: a place in the backlog frees up
    third = await admitted()
    await waiting[1].close()  # one goes without a hello: another place
    fourth = await admitted()
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(running.ws)
    for ws in (waiting[0], third, fourth):
        await ws.close()


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


async def test_limits_off_lets_everything_through_and_still_counts_usage(
    start_server: Callable[..., RunningServer],
) -> None:
    """``LIMITS=off`` (trusted deployments, and the benchmark of what limits cost)."""
    running = start_server(limits=False, turns_per_minute=1, connections_per_user=1, metrics=False)
    user = new_user()
    client, second = await Client.connect(running.ws), await Client.connect(running.ws)
    await client.hello(user)
    await second.hello(user)  # over connections_per_user, allowed
    cid = await client.create()
    for n in range(3):  # over turns_per_minute, allowed
        await client.send(Send(id=f"t{n}", conversation_id=cid, text="hi"))
        await client.expect(Ack)
        end, _ = await client.until(TurnEnd)
        assert end.finish_reason == "stop"
    async with httpx.AsyncClient(
        base_url=running.http, headers={"Authorization": f"Bearer {user}"}
    ) as http:
        assert (await http.get("/api/v1/usage")).json()["used"] > 0, "usage is counted"
        off = await http.get("/metrics")
        assert off.status_code == 404
        assert "METRICS=off" in off.text
    await client.close()
    await second.close()


async def test_rest_requests_over_the_rate_get_429_with_retry_after(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(requests_per_minute=3)
    user = new_user()
    async with httpx.AsyncClient(
        base_url=f"{running.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        assert [(await http.get("/usage")).status_code for _ in range(3)] == [200] * 3
        refused = await http.get("/assistants")
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        other = await http.get("/usage", headers={"Authorization": f"Bearer {new_user()}"})
        assert other.status_code == 200, "per user"
