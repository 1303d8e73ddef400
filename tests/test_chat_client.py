"""chat_client, the Python client, against real servers: the same guarantees as the
TypeScript client (a streamed reply; a connection lost mid-reply resumes with no
repeated or missing character; an unacked turn is resent and stored once, also across a
restart of the client; 4401 stops; go_away moves to the other replica)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_client import ChatClient, ChatClientError
from chat_server.config import Secret
from chat_server.storage.models import Message as MessageRow
from protocol.messages import Ack, Delta, GoAway, MessageInfo, TurnEnd, TurnStart
from tests.replicas import Replica
from tests.servers import RunningServer
from tests.wsclient import directive, new_user

pytestmark = pytest.mark.asyncio


async def rows(db: async_sessionmaker[AsyncSession], cid: uuid.UUID) -> list[MessageRow]:
    async with db() as s:
        query = select(MessageRow).where(MessageRow.conversation_id == cid)
        return list(await s.scalars(query.order_by(MessageRow.seq)))


def watch_offsets(client: ChatClient, cid: uuid.UUID, counts: dict[str, int]) -> None:
    """Count what resumption must never deliver: a delta past the text held (a gap)."""

    def seen(delta: Delta) -> None:
        reply = client.state.conversations[cid].replies.get(delta.turn_id)
        if reply is not None and delta.offset > len(reply.text):
            counts["gaps"] += 1

    client.on("delta", seen)


async def test_a_reply_streams_in_and_equals_the_stored_one(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    client = ChatClient(server.ws, new_user())
    await client.connect()
    info = await client.create("python")
    ended = client.next("turn_end")
    ack = await client.send(info.id, "hello " + directive(tps=200, tokens=20))
    end = await asyncio.wait_for(ended, 15)
    assert isinstance(end, TurnEnd)
    reply = client.state.conversations[info.id].replies[end.turn_id]
    assert (reply.done, reply.text) == (True, end.message.text)
    stored = await rows(db, info.id)
    assert [r.id for r in stored] == [ack.message_id, end.turn_id]
    assert stored[-1].text == reply.text
    await client.close()


async def test_a_connection_lost_mid_reply_resumes_exactly(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    client = ChatClient(server.ws, new_user(), backoff_base_s=0.05)
    await client.connect()
    info = await client.create("drop")
    counts = {"gaps": 0}
    watch_offsets(client, info.id, counts)
    started = client.next("turn_start")
    await client.send(info.id, "long " + directive(tps=40, tokens=80))
    start = await asyncio.wait_for(started, 10)
    assert isinstance(start, TurnStart)
    for _ in range(2):  # two losses of the network along the reply
        await asyncio.wait_for(client.next("delta", lambda d: d.offset > 0), 10)
        await client.drop()
    end = await asyncio.wait_for(client.next("turn_end"), 20)
    assert isinstance(end, TurnEnd)
    reply = client.state.conversations[info.id].replies[start.turn_id]
    assert reply.text == end.message.text == (await rows(db, info.id))[-1].text
    assert counts["gaps"] == 0
    await client.close()


async def test_an_unacked_turn_is_resent_after_a_drop_and_stored_once(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    client = ChatClient(server.ws, new_user(), backoff_base_s=0.05)
    await client.connect()
    info = await client.create("outbox")

    def answer(m: Any) -> bool:
        return bool(m.message.role == "assistant")

    # The short reply may end while the device is away: then the resume brings it stored.
    answered = [client.next("turn_end", answer), client.next("message", answer)]
    sending = asyncio.create_task(client.send(info.id, "remember me " + directive(tokens=3)))
    await asyncio.sleep(0)  # the frame is written...
    await client.drop()  # ...and the network is gone before the ack can come back
    ack = await asyncio.wait_for(sending, 15)
    assert client.state.outbox == []
    done, _ = await asyncio.wait(answered, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert done, "the reply arrived, live or stored"
    users = [r for r in await rows(db, info.id) if r.role == "user"]
    assert [r.id for r in users] == [ack.message_id], "stored exactly once"
    await client.close()


async def test_the_outbox_file_survives_a_restart_of_the_client(
    server: RunningServer, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    user, path = new_user(), tmp_path / "outbox.json"
    first = ChatClient(server.ws, user, outbox_path=path)
    await first.connect()
    info = await first.create("restart")
    await first.close()  # the app quits before the turn went out
    pending = asyncio.create_task(first.send(info.id, "sent while offline"))
    await asyncio.sleep(0.05)
    assert path.exists()
    pending.cancel()
    second = ChatClient(server.ws, user, outbox_path=path)
    acked = second.next("ack")
    await second.connect()  # rejoins the outbox's conversation and resends
    await asyncio.wait_for(acked, 10)
    assert not path.exists()
    texts = [r.text for r in await rows(db, info.id)]
    assert texts.count("sent while offline") == 1
    await second.close()


async def test_a_regenerate_queued_offline_survives_a_restart_and_branches_follow(
    server: RunningServer, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    user, path = new_user(), tmp_path / "outbox.json"
    first = ChatClient(server.ws, user, outbox_path=path)
    await first.connect()
    info = await first.create("branches")
    ended = first.next("turn_end")
    turn = await first.send(info.id, "pick a name")
    original: TurnEnd = await asyncio.wait_for(ended, 10)
    await first.close()
    pending = asyncio.create_task(first.regenerate(info.id, turn.message_id))
    await asyncio.sleep(0.05)
    assert '"type":"regenerate"' in path.read_text().replace(" ", "")
    pending.cancel()

    second = ChatClient(server.ws, user, outbox_path=path)
    acked = second.next("ack")
    ended = second.next("turn_end")
    await second.connect()  # resends the regenerate: one new reply
    again: Ack = await asyncio.wait_for(acked, 10)
    await asyncio.wait_for(ended, 10)
    c = second.state.conversations[info.id]
    assert [m.id for m in c.branch()] == [again.message_id], "the user turn is not held yet"
    stored = await rows(db, info.id)
    assert [(r.role, r.parent_id) for r in stored] == [
        ("user", None),
        ("assistant", turn.message_id),
        ("assistant", turn.message_id),
    ]

    ended = second.next("turn_end")
    edit = await second.send(info.id, "pick a shorter name", edit_of=turn.message_id)
    await asyncio.wait_for(ended, 10)
    edited = c.branch()
    assert [m.id for m in edited][:1] == [edit.message_id]
    assert isinstance(edited[0], MessageInfo)
    assert (edited[0].alternative, edited[0].alternatives) == (2, 2)

    page = await second.switch(info.id, edit.message_id, alternative=1)
    assert [m.id for m in page.messages] == [turn.message_id, again.message_id]
    assert [m.id for m in c.branch()] == [turn.message_id, again.message_id]
    shown = c.branch()[-1]
    assert isinstance(shown, MessageInfo)
    assert (shown.alternative, shown.alternatives) == (2, 2)
    assert shown.text
    assert original.message.alternatives == 1
    await second.close()


async def test_4401_stops_reconnecting(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(jwt_secret=Secret("s" * 32))
    client = ChatClient(running.ws, "not-a-jwt", backoff_base_s=0.01)
    with pytest.raises(ChatClientError) as failed:
        await client.connect()
    assert failed.value.code == 4401
    await asyncio.sleep(0.2)
    assert client.state.status == "closed"
    await client.close()


async def test_go_away_moves_to_the_other_replica_and_the_reply_finishes_exactly(
    replicas: Callable[..., list[Replica]], db: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas(2)
    client = ChatClient([a.ws, b.ws], new_user(), backoff_base_s=0.05)
    await client.connect()
    info = await client.create("go away")
    started = client.next("turn_start")
    await client.send(info.id, "drain " + directive(tps=30, tokens=60))
    start = await asyncio.wait_for(started, 10)
    assert isinstance(start, TurnStart)
    going = client.next("go_away")
    a.process.send_signal(signal.SIGTERM)
    assert isinstance(await asyncio.wait_for(going, 10), GoAway)
    end = await asyncio.wait_for(client.next("turn_end"), 30)
    assert isinstance(end, TurnEnd)
    reply = client.state.conversations[info.id].replies[start.turn_id]
    assert (reply.text, end.finish_reason) == (end.message.text, "stop"), end.error
    assert (await rows(db, info.id))[-1].text == reply.text
    await client.close()
