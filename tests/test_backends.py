"""One contract suite, run against every backend: the Bus, the in-flight store and the
presence store (memory, Redis each). What the docstrings of bus/, inflight/ and
presence/ promise, and how presence announcements are coalesced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from chat_server.bus import Bus
from chat_server.bus.memory import MemoryBroker, MemoryBus
from chat_server.bus.redis import RedisBus
from chat_server.inflight import Inflight
from chat_server.inflight.memory import MemoryInflight
from chat_server.inflight.redis import RedisInflight
from chat_server.presence import Device, PresenceStore, PresenceTracker
from chat_server.presence.memory import MemoryPresence
from chat_server.presence.redis import RedisPresence
from load.spawn import EmbeddedRedis
from protocol.messages import Presence

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["memory", "redis"])
async def make_bus(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[Callable[[], Any]]:
    """Returns a factory of connected buses that share one backend (like replicas)."""
    broker = MemoryBroker()
    made: list[tuple[Bus, Any]] = []

    async def make() -> Bus:
        client = None
        if request.param == "memory":
            bus: Bus = MemoryBus(broker)
        else:
            client = aioredis.Redis.from_url(redis_server.url)
            bus = RedisBus(client)
        await bus.start()
        made.append((bus, client))
        return bus

    yield make
    for bus, client in made:
        await bus.aclose()
        if client is not None:
            await client.aclose()


T = TypeVar("T")


class Inbox(list[T]):
    """A list a callback fills, and a wait (on its appends, not a poll) for its size."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def append(self, item: T) -> None:
        super().append(item)
        self._grew.set()

    async def holding(self, count: int) -> list[T]:
        """The items once there are ``count``, within 5 s."""
        async with asyncio.timeout(5):
            while len(self) < count:
                self._grew.clear()
                await self._grew.wait()
        return list(self)


async def test_payloads_arrive_in_publish_order_at_every_subscriber(make_bus: Any) -> None:
    a, b = await make_bus(), await make_bus()
    got_a: Inbox[bytes] = Inbox()
    got_b: Inbox[bytes] = Inbox()
    await a.subscribe("conv:1", got_a.append)
    await b.subscribe("conv:1", got_b.append)
    sent = [f"m{i}".encode() for i in range(50)]
    for payload in sent:
        await a.publish("conv:1", payload)
    assert await got_b.holding(50) == sent
    assert await got_a.holding(50) == sent  # the publisher hears itself (hub drops it)
    assert a.healthy
    assert b.healthy


async def test_a_subscription_is_live_when_subscribe_returns(make_bus: Any) -> None:
    a, b = await make_bus(), await make_bus()
    got: Inbox[bytes] = Inbox()
    await b.subscribe("conv:2", got.append)
    await a.publish("conv:2", b"first")  # published right after subscribe returned
    assert await got.holding(1) == [b"first"]


async def test_unsubscribe_stops_delivery_and_other_channels_are_separate(make_bus: Any) -> None:
    a, b = await make_bus(), await make_bus()
    got: Inbox[bytes] = Inbox()
    other: Inbox[bytes] = Inbox()
    await b.subscribe("conv:3", got.append)
    await b.subscribe("conv:4", other.append)
    await a.publish("conv:3", b"one")
    await got.holding(1)
    await b.unsubscribe("conv:3")
    await b.unsubscribe("conv:never")  # unknown channel: no-op
    await a.publish("conv:3", b"two")
    await a.publish("conv:4", b"marker")
    await other.holding(1)
    assert got == [b"one"]


@pytest.fixture(params=["memory", "redis"])
async def inflight(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[Inflight]:
    if request.param == "memory":
        yield MemoryInflight()
        return
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisInflight(client, lease_ms=300, ttl_s=60)
    await client.aclose()


async def test_inflight_keeps_text_so_far_until_end(inflight: Inflight) -> None:
    turn, conv = uuid.uuid4(), uuid.uuid4()
    await inflight.begin(turn, conv, b'{"type":"turn_start"}', "node-a")
    for piece in ["こんにちは", ", ", "world"]:
        await inflight.append(turn, piece)
    state = await inflight.get(turn)
    assert state is not None
    assert (state.text, state.node, state.start) == (
        "こんにちは, world",
        "node-a",
        b'{"type":"turn_start"}',
    )
    assert [t.turn_id for t in await inflight.active(conv)] == [turn]
    assert await inflight.lease_alive(turn)
    await inflight.end(turn, conv)
    assert await inflight.get(turn) is None
    assert await inflight.active(conv) == []
    assert not await inflight.lease_alive(turn)


async def test_redis_lease_lapses_unless_renewed(redis_server: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = RedisInflight(client, lease_ms=300, ttl_s=60)
    kept, dropped, conv = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.begin(kept, conv, b"{}", "n")
    await store.begin(dropped, conv, b"{}", "n")
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await store.renew([kept], node="n") == []
    assert await store.lease_alive(kept)
    assert not await store.lease_alive(dropped)
    assert await store.get(dropped) is not None, (
        "the text outlives the lease (the sweeper needs it)"
    )
    assert 0 < await client.ttl(f"inflight:{dropped}") <= 60, "and still expires"
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def presence(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[PresenceStore]:
    if request.param == "memory":
        yield MemoryPresence(ttl_s=0.6)
        return
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisPresence(client, ttl_s=0.6)
    await client.aclose()


async def test_redis_renew_recreates_lost_leases_and_names_lost_turns(
    redis_server: EmbeddedRedis,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = RedisInflight(client, lease_ms=5000, ttl_s=60)
    turn, conv = uuid.uuid4(), uuid.uuid4()
    await store.begin(turn, conv, b"{}", "n")
    await store.append(turn, "so far")
    await client.flushall()  # what a Redis restart without persistence looks like
    assert await store.renew([turn], node="n") == [turn], "the owner learns what was lost"
    assert await store.lease_alive(turn), "PEXPIRE would not have re-created the lease"
    await store.restore(turn, conv, b"{}", "n", "so far")
    assert await store.renew([turn], node="n") == []
    restored = await store.get(turn)
    assert restored is not None
    assert (restored.text, restored.node) == ("so far", "n")
    assert [t.turn_id for t in await store.active(conv)] == [turn]
    await client.aclose()


async def test_presence_lists_live_devices_until_they_leave_or_lapse(
    presence: PresenceStore,
) -> None:
    conv = uuid.uuid4()
    ann, bob, bob_phone = Device("s1", "ann"), Device("s2", "bob"), Device("s3", "bob")
    for device in (bob_phone, ann, bob):
        await presence.enter(conv, device)
    assert await presence.members(conv) == [ann, bob, bob_phone]
    await presence.leave(conv, bob_phone)
    assert await presence.members(conv) == [ann, bob]
    await asyncio.sleep(0.4)
    await presence.refresh([(conv, bob)])
    await asyncio.sleep(0.4)  # past ann's TTL, within bob's refreshed one
    assert await presence.members(conv) == [bob]
    await asyncio.sleep(0.7)
    assert await presence.members(conv) == []


class Announced:
    """What a tracker published, with a way to wait for the next frames."""

    def __init__(self) -> None:
        self.frames: Inbox[Presence] = Inbox()

    async def publish(self, frame: Presence) -> None:
        self.frames.append(frame)

    async def count(self, n: int) -> list[Presence]:
        return await self.frames.holding(n)


async def test_a_join_storm_is_announced_once_or_twice_not_per_device() -> None:
    announced = Announced()
    tracker = PresenceTracker(MemoryPresence(), announced.publish, window_s=0.1)
    conv, other = uuid.uuid4(), uuid.uuid4()
    await asyncio.gather(
        *(tracker.enter(conv, Device(f"s{i}", f"u{i % 10}")) for i in range(200)),
        tracker.enter(other, Device("x", "solo")),
    )
    await asyncio.sleep(0.4)  # a few windows: every pending change is out by now
    mine = [f for f in announced.frames if f.conversation_id == conv]
    assert 1 <= len(mine) <= 2, f"{len(mine)} presence frames for one storm"
    assert (mine[-1].devices, mine[-1].users) == (200, [f"u{i}" for i in range(10)])
    assert [(f.devices, f.users) for f in announced.frames if f.conversation_id == other] == [
        (1, ["solo"])
    ]
    await tracker.aclose()


async def test_presence_changes_go_out_at_once_then_at_most_once_per_window() -> None:
    announced = Announced()
    tracker = PresenceTracker(MemoryPresence(), announced.publish, window_s=0.3)
    conv = uuid.uuid4()
    await tracker.enter(conv, Device("s1", "ann"))
    assert [f.devices for f in await announced.count(1)] == [1]  # the first change: at once
    await tracker.enter(conv, Device("s2", "bob"))
    await tracker.leave(conv, Device("s1", "ann"))
    frames = await announced.count(2)  # both changes, together, when the window ends
    assert [(f.devices, f.users) for f in frames] == [(1, ["ann"]), (1, ["bob"])]
    await asyncio.sleep(0.5)
    assert len(announced.frames) == 2, "nothing changed, nothing announced"
    await tracker.aclose()
    await tracker.enter(conv, Device("s3", "cy"))  # closed: the store still learns it
    await asyncio.sleep(0.05)
    assert len(announced.frames) == 2
    assert await tracker.store.members(conv) == [Device("s2", "bob"), Device("s3", "cy")]
