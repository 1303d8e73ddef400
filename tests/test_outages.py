"""Redis and Postgres go away and come back: no reply loses text, every reply ends with
one turn_end and a final write, and a device told it joined is joined."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.config import Secret
from chat_server.storage import embedded, migrate
from load.spawn import EmbeddedRedis
from protocol.messages import (
    Ack,
    Delta,
    Error,
    Join,
    Joined,
    Ping,
    Pong,
    Send,
    ServerMessage,
    TurnEnd,
    Typing,
)
from tests.replicas import Replica
from tests.servers import RunningServer
from tests.test_replicas import join, on, stored
from tests.wsclient import Client, directive, new_user

pytestmark = pytest.mark.asyncio

LONG = directive(tps=40, tokens=160)  # ~4 s of streaming


def own_redis() -> None:
    if os.environ.get("TEST_REDIS_URL"):
        pytest.skip("restarts the embedded Redis; TEST_REDIS_URL is not ours to restart")


async def until_end(client: Client, timeout: float = 30) -> tuple[TurnEnd, list[Delta]]:
    """The turn_end, and the deltas the device was shown before it."""
    shown: list[Delta] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.recv(timeout)
            if isinstance(frame, Delta):
                shown.append(frame)
            if isinstance(frame, TurnEnd):
                return frame, shown


def assert_holds(text: str, shown: list[Delta]) -> None:
    """Every character a device was shown is in ``text`` at its offset: the stored
    reply is never shorter than, nor different from, what devices saw."""
    for delta in shown:
        assert text[delta.offset : delta.offset + len(delta.text)] == delta.text, delta


async def test_a_redis_restart_keeps_every_live_reply(
    replicas: Callable[..., list[Replica]],
    redis_server: EmbeddedRedis,
    db: async_sessionmaker[AsyncSession],
) -> None:
    own_redis()
    a, b = replicas(2)
    user = new_user()
    pairs: list[tuple[Client, Client, uuid.UUID]] = []
    for i in range(4):  # four long replies generated on A, watched from B
        sender, watcher = await on(a, user), await on(b, user)
        cid = await sender.create()
        await join(watcher, cid)
        await sender.send(Send(id=f"s{i}", conversation_id=cid, text=f"story {i} {LONG}"))
        await sender.expect(Ack)
        pairs.append((sender, watcher, cid))
    for _, watcher, _ in pairs:
        await watcher.until(Delta)

    redis_server.stop()  # no persistence: it comes back empty
    await asyncio.sleep(0.3)
    redis_server.start()

    ours = []
    for sender, watcher, cid in pairs:
        end_a, shown_a = await until_end(sender)
        ours.append(end_a.turn_id)
        end_b, shown_b = await until_end(watcher)
        # The replicas noticed nothing to end: the owner re-created what Redis lost.
        assert end_a.finish_reason == "stop", end_a.error
        assert end_b.message.text == end_a.message.text
        row = (await stored(db, cid))[-1]
        assert (row.status, row.text) == ("complete", end_a.message.text)
        assert_holds(row.text, shown_a + shown_b)
        await sender.close()
        await watcher.close()
    # No sweeper took one of these live replies for a lost replica's. (Replies that
    # other tests left streaming in the shared database may rightly be swept.)
    for replica in (a, b):
        for turn_id in ours:
            assert f"ended reply {turn_id} of a lost replica" not in replica.output()


async def test_a_join_while_redis_is_away_leaves_the_device_joined(
    replicas: Callable[..., list[Replica]], redis_server: EmbeddedRedis
) -> None:
    own_redis()
    (a,) = replicas(1)
    user = new_user()
    first = await on(a, user)
    cid = await first.create()
    second = await on(a, user)
    redis_server.stop()
    deadline = time.monotonic() + 10
    while a.ready() != 503:
        assert time.monotonic() < deadline, "readiness did not fail without Redis"
        await asyncio.sleep(0.1)
    try:
        await second.send(Join(id="j", conversation_id=cid))
        joined = await second.expect(Joined)
        assert joined.conversation.id == cid
        # Joined means joined: typing is accepted (it was not_joined), no error follows.
        await second.send(Typing(id="t", conversation_id=cid))
        await second.send(Ping(id="p"))
        frames: list[ServerMessage] = []
        while not isinstance(frame := await second.recv(), Pong):
            frames.append(frame)
        assert not [f for f in frames if isinstance(f, Error)], frames
    finally:
        redis_server.start()
    await first.close()
    await second.close()


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Any, Path]]:
    """A Postgres of this test's own, so it can be stopped and started again."""
    with tempfile.TemporaryDirectory(prefix="chat-outage-pg-") as tmp:
        datadir = Path(tmp) / "pg"
        url, server = embedded.start(datadir, keep_running=False)
        migrate.upgrade(url)
        try:
            yield url, server, datadir
        finally:
            server.cleanup()


async def test_a_reply_in_flight_when_postgres_stops_ends_once_it_is_back(
    start_server: Callable[..., RunningServer], own_postgres: tuple[str, Any, Path]
) -> None:
    url, postgres, datadir = own_postgres
    server = start_server(database_url=Secret(url), lease_ms=1000)
    client = await Client.connect(server.ws)
    await client.hello(new_user())
    cid = await client.create()
    await client.send(
        Send(id="s", conversation_id=cid, text="hold on " + directive(tps=40, tokens=60))
    )
    await client.expect(Ack)
    await client.until(Delta)

    assert embedded.stop(datadir)
    await asyncio.sleep(2.5)  # the model finishes meanwhile; its final write cannot
    postgres.ensure_postgres_running()

    end, shown = await until_end(client, timeout=20)
    assert end.finish_reason == "stop", end.error
    assert_holds(end.message.text, shown)
    await client.close()
    # The row is complete, not left streaming: a device joining later sees it finished.
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "select status, text from messages where conversation_id = $1 order by seq desc",
            cid,
        )
    finally:
        await connection.close()
    assert (row["status"], row["text"]) == ("complete", end.message.text)
