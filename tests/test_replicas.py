"""Several server processes behave as one: real replicas sharing a real Redis and
Postgres, driven by real WebSocket clients. Timings asserted here are loose bounds
against hangs; the measured figures are printed (run with -s to see them)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage.models import Message as MessageRow
from load.spawn import EmbeddedRedis
from protocol.errors import CloseCode
from protocol.messages import (
    Ack,
    Cancel,
    Delta,
    GoAway,
    Input,
    Join,
    Joined,
    Message,
    Send,
    ServerMessage,
    SessionOptions,
    Thought,
    TurnEnd,
    TurnStart,
    Typing,
    TypingEvent,
)
from tests.replicas import Replica
from tests.wsclient import Client, directive, new_user, reply_text

pytestmark = pytest.mark.asyncio

SLOW = directive(tps=25, tokens=60)  # ~2.4 s of streaming


async def on(replica: Replica, user: str) -> Client:
    client = await Client.connect(replica.ws)
    await client.hello(user)
    return client


async def join(client: Client, cid: uuid.UUID, after_seq: int | None = None) -> Joined:
    await client.send(Join(conversation_id=cid, after_seq=after_seq))
    return await client.expect(Joined)


async def stored(db: async_sessionmaker[AsyncSession], cid: uuid.UUID) -> list[MessageRow]:
    async with db() as s:
        rows = await s.scalars(
            select(MessageRow).where(MessageRow.conversation_id == cid).order_by(MessageRow.seq)
        )
        return list(rows)


async def two_devices(a: Replica, b: Replica) -> tuple[str, Client, Client, uuid.UUID]:
    """One user with a device on each replica, both joined to a new conversation."""
    user = new_user()
    first, second = await on(a, user), await on(b, user)
    cid = await first.create()
    await join(second, cid)
    return user, first, second, cid


async def slow_turn(client: Client, cid: uuid.UUID, text: str) -> Ack:
    await client.send(Send(id="1", conversation_id=cid, text=f"{text} {SLOW}"))
    return await client.expect(Ack)


def deltas(frames: list[ServerMessage]) -> list[tuple[int, str]]:
    return [(f.offset, f.text) for f in frames if isinstance(f, Delta)]


async def test_a_device_on_b_sees_the_reply_generated_on_a_token_by_token(
    replicas: Callable[..., list[Replica]],
) -> None:
    user, sender, watcher, cid = await two_devices(*replicas(2))
    # Paced at 100 tokens/s after 300 ms: a fresh replica's first model call (SDK and
    # connection setup) must not find the whole reply already buffered in its socket.
    paced = directive(tokens=30, ttft_ms=300, tps=100)
    await sender.send(Send(id="1", conversation_id=cid, text="hello " + paced))
    await sender.expect(Ack)
    end_a, frames_a = await sender.until(TurnEnd)
    end_b, frames_b = await watcher.until(TurnEnd)
    assert end_b.message.text == end_a.message.text
    on_a, on_b = deltas(frames_a), deltas(frames_b)
    # B relays A's deltas: same offsets, same text. A device that falls behind (a
    # loaded machine) gets adjacent deltas merged into one frame, so B may have fewer
    # boundaries than A, never other ones; on an idle machine the lists are equal.
    assert {offset for offset, _ in on_b} <= {offset for offset, _ in on_a}, (on_a, on_b)
    assert "".join(t for _, t in on_b) == "".join(t for _, t in on_a)
    assert len(on_b) >= 10, "token by token, not the reply in a few pieces"
    assert reply_text(frames_b, end_b.turn_id) == end_b.message.text
    assert [type(f).__name__ for f in frames_b[:2]] == ["Message", "TurnStart"]
    await watcher.send(Typing(conversation_id=cid))
    typing = await sender.expect(TypingEvent)  # typing crosses replicas too
    assert typing.user_id == user
    seen = await sender.presence_where(lambda p: p.devices == 2)  # and so does presence
    assert seen.users == [user]
    await watcher.close()
    gone = await sender.presence_where(lambda p: p.devices == 1)
    assert gone.users == [user]
    await sender.close()


async def test_reconnecting_to_the_other_replica_mid_stream_has_no_gap_and_no_duplicate(
    replicas: Callable[..., list[Replica]],
) -> None:
    a, b = replicas(2)
    user = new_user()
    client = await on(a, user)
    cid = await client.create()
    await client.send(Send(id="1", conversation_id=cid, text="tell me " + SLOW))
    ack = await client.expect(Ack)
    await client.until(Delta)
    await client.until(Delta)
    await client.close()  # the device drops mid-stream

    client = await on(b, user)
    await join(client, cid, after_seq=ack.seq)
    start = await client.expect(TurnStart)
    end, frames = await client.until(TurnEnd)
    text = reply_text(frames, start.turn_id)  # asserts contiguous offsets from 0
    assert text == end.message.text
    assert end.finish_reason == "stop"
    first = next(f for f in frames if isinstance(f, Delta))
    assert first.offset == 0
    assert len(first.text) > 3, "the text so far arrives in one catch-up delta"
    await client.close()


async def test_cancel_sent_to_b_stops_the_generation_running_on_a(
    replicas: Callable[..., list[Replica]], db: async_sessionmaker[AsyncSession]
) -> None:
    _, sender, canceller, cid = await two_devices(*replicas(2))
    await slow_turn(sender, cid, "go")
    await canceller.until(Delta)
    await canceller.until(Delta)
    sent_at = time.monotonic()
    await canceller.send(Cancel(conversation_id=cid, heard_chars=5))
    end, _ = await canceller.until(TurnEnd, timeout=5)
    latency_ms = (time.monotonic() - sent_at) * 1000
    print(f"\ncancel across replicas: turn_end after {latency_ms:.0f} ms")
    assert latency_ms < 2000
    assert end.finish_reason == "interrupted"
    assert len(end.message.text) == 5
    rows = await stored(db, cid)
    assert (rows[-1].status, rows[-1].text) == ("interrupted", end.message.text)
    sender_end, _ = await sender.until(TurnEnd)
    assert sender_end.message.text == end.message.text
    await sender.close()
    await canceller.close()


async def test_a_final_input_on_b_interrupts_a_reply_on_a_before_its_own_turn_is_stored(
    replicas: Callable[..., list[Replica]],
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    # Barge-in across replicas: B cancels through the control channel, then waits for
    # the turn_end of A's reply (through the hub) before it stores the new turn.
    _, sender, speaker, cid = await two_devices(*replicas(2))
    await slow_turn(sender, cid, "tell me everything")
    await speaker.until(Delta)
    await speaker.until(Delta)
    await speaker.send(
        Input(conversation_id=cid, input_id="v1", text="wait, hm", final=True, heard_chars=7)
    )
    ack, frames = await speaker.until(Ack, timeout=10)
    interrupted = next(f for f in frames if isinstance(f, TurnEnd))
    assert interrupted.finish_reason == "interrupted"
    assert len(interrupted.message.text) == 7
    assert ack.seq == 3
    await speaker.until(TurnEnd)  # the new turn's reply
    contents = sim_requests()[-1]["body"]["contents"]
    assert contents[-2]["parts"][0]["text"] == interrupted.message.text, "the model saw the cut"
    rows = await stored(db, cid)
    assert [(r.seq, r.status) for r in rows[:3]] == [
        (1, "complete"),
        (2, "interrupted"),
        (3, "complete"),
    ]
    await sender.close()
    await speaker.close()


async def test_the_same_send_on_two_replicas_at_once_is_one_message_and_one_model_call(
    replicas: Callable[..., list[Replica]],
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    _, one, two, cid = await two_devices(*replicas(2))
    marker = uuid.uuid4().hex
    send = Send(id="retry", conversation_id=cid, text=f"once {marker}")
    await asyncio.gather(one.send(send), two.send(send))
    acks = [(await one.until(Ack))[0], (await two.until(Ack))[0]]
    assert len({x.message_id for x in acks}) == 1
    assert sorted(x.duplicate for x in acks) == [False, True]
    await one.until(TurnEnd)
    await two.until(TurnEnd)
    assert [r.role for r in await stored(db, cid)] == ["user", "assistant"]
    assert len([r for r in sim_requests() if marker in str(r["body"])]) == 1
    await one.close()
    await two.close()


async def test_a_killed_replicas_turn_ends_with_error_and_its_partial_text_is_stored(
    replicas: Callable[..., list[Replica]], db: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas(2)
    _, sender, watcher, cid = await two_devices(a, b)
    await slow_turn(sender, cid, "doomed")
    start, _ = await watcher.until(TurnStart)
    seen = ""
    while len(seen) < 20:
        seen += (await watcher.expect(Delta)).text
    a.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    end, frames = await watcher.until(TurnEnd, timeout=10)
    ended_ms = (time.monotonic() - killed_at) * 1000
    print(f"\nkill -9: the lost replica's turn ended after {ended_ms:.0f} ms (LEASE_MS=1000)")
    assert end.turn_id == start.turn_id
    assert end.finish_reason == "error"
    assert end.error is not None
    assert "stopped" in end.error.message
    # The stored text is the shared text so far: everything the watcher saw, at least.
    assert end.message.text.startswith(seen + "".join(t for _, t in deltas(frames)))
    rows = await stored(db, cid)
    assert (rows[-1].status, rows[-1].text) == ("error", end.message.text)
    assert not [r for r in rows if r.status == "streaming"]
    await watcher.close()


async def test_after_a_redis_restart_replicas_resubscribe_and_repair_the_gap(
    replicas: Callable[..., list[Replica]],
    redis_server: EmbeddedRedis,
    db: async_sessionmaker[AsyncSession],
) -> None:
    if os.environ.get("TEST_REDIS_URL"):
        pytest.skip("restarts the embedded Redis; TEST_REDIS_URL is not ours to restart")
    a, b = replicas(2)
    _, sender, watcher, cid = await two_devices(a, b)
    await slow_turn(sender, cid, "through the outage")
    await watcher.until(Delta)

    redis_server.stop()
    deadline = time.monotonic() + 10
    while {a.ready(), b.ready()} != {503}:
        assert time.monotonic() < deadline, "readiness did not fail without Redis"
        await asyncio.sleep(0.1)
    end_a, _ = await sender.until(TurnEnd, timeout=10)  # finishes while Redis is away
    redis_server.start()
    while {a.ready(), b.ready()} != {200}:
        assert time.monotonic() < deadline + 20, "replicas did not recover"
        await asyncio.sleep(0.1)

    # The watcher missed the end of the reply on the bus: the resync sends it.
    frames: list[ServerMessage] = []
    async with asyncio.timeout(10):
        while True:
            frame = await watcher.recv()
            frames.append(frame)
            if isinstance(frame, Message | TurnEnd) and frame.seq == end_a.seq:
                break
    final = frames[-1]
    text = final.message.text if isinstance(final, Message | TurnEnd) else ""
    assert text == end_a.message.text
    assert (await stored(db, cid))[-1].status == "complete"

    # And the bus works again both ways.
    await watcher.send(Send(id="2", conversation_id=cid, text="again " + directive(tokens=5)))
    await watcher.until(Ack)
    end_again, _ = await sender.until(TurnEnd)
    assert end_again.seq == 4
    await sender.close()
    await watcher.close()


async def test_sigterm_drains_go_away_then_replies_finish_then_1012(
    replicas: Callable[..., list[Replica]], db: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas(2)
    _, leaving, staying, cid = await two_devices(a, b)
    await slow_turn(leaving, cid, "finish me")
    await staying.until(Delta)

    a.process.send_signal(signal.SIGTERM)
    go_away, _ = await leaving.until(GoAway, timeout=5)
    assert go_away.reconnect_after_ms >= 0
    assert a.ready() == 503
    with pytest.raises(Exception, match="503"):
        await Client.connect(a.ws)  # no new connections while draining
    end, _ = await staying.until(TurnEnd, timeout=10)
    assert end.finish_reason == "stop", "the reply finished on the draining replica"
    assert (await stored(db, cid))[-1].text == end.message.text
    assert await leaving.closed_with(timeout=15) == CloseCode.SERVICE_RESTART
    assert a.process.wait(timeout=15) in (0, -signal.SIGTERM)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{b.http}/ready")).status_code == 200
    await staying.close()


async def test_no_acknowledged_message_is_lost_when_a_replica_dies_under_load(
    replicas: Callable[..., list[Replica]], db: async_sessionmaker[AsyncSession]
) -> None:
    """30 conversations x 3 turns over three replicas; one is killed mid-run. Clients
    reconnect elsewhere, resume with after_seq and resend unacked turns with the same
    id, as the protocol tells them to."""
    nodes = replicas(3)
    victim = nodes[0]
    alive = nodes[1:]
    conversations, turns_each = 30, 3
    acked: dict[uuid.UUID, set[str]] = {}
    resends = 0
    views: dict[uuid.UUID, dict[int, str]] = {}

    async def worker(i: int) -> None:
        nonlocal resends
        user = new_user()
        node = nodes[i % 3]
        client = await on(node, user)
        cid = await client.create()
        acked[cid], views[cid] = set(), {}
        have = 0  # every seq up to this one is held complete

        async def reconnect() -> Client:
            target = alive[i % 2]
            fresh = await on(target, user)
            await fresh.send(Join(conversation_id=cid, after_seq=have))
            await fresh.expect(Joined)
            return fresh

        for k in range(turns_each):
            send = Send(
                id=f"t{k}", conversation_id=cid, text=f"turn {k} " + directive(tps=30, tokens=25)
            )
            reply_seq: int | None = None
            await client.send(send)
            while True:
                try:
                    frame = await client.recv(timeout=8)
                except Exception:  # dropped with its replica (no close frame) or stalled
                    client = await reconnect()
                    if send.id not in acked[cid]:
                        resends += 1
                        await client.send(send)
                    continue
                if isinstance(frame, Ack) and frame.id == send.id:
                    acked[cid].add(send.id)
                    reply_seq = frame.seq + 1
                elif isinstance(frame, Message | TurnEnd):
                    views[cid][frame.seq] = frame.message.text
                    while have + 1 in views[cid]:  # resume point: complete up to here
                        have += 1
                    if reply_seq is not None and frame.seq == reply_seq:
                        break
        await client.close()

    started = time.monotonic()
    work = asyncio.gather(*(worker(i) for i in range(conversations)))
    await asyncio.sleep(1.5)
    victim.process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(work, timeout=120)
    elapsed = time.monotonic() - started

    lost = 0
    errors = 0
    async with db() as s:
        for cid, ids in acked.items():
            rows = list(
                await s.scalars(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == cid)
                    .order_by(MessageRow.seq)
                )
            )
            stored_ids = {r.client_id for r in rows if r.role == "user"}
            lost += len(ids - stored_ids)
            assert ids == {f"t{k}" for k in range(turns_each)}, "every turn was acked in the end"
            assert len(rows) == 2 * turns_each, "no duplicate turn from the resends"
            assert not [r for r in rows if r.status == "streaming"]
            errors += sum(r.status == "error" for r in rows)
            for seq, text in views[cid].items():
                assert rows[seq - 1].text == text, "what a client was told is what is stored"
    print(
        f"\nfailover: {conversations} conversations x {turns_each} turns, 3 replicas, "
        f"one killed; {elapsed:.1f} s; acked messages lost: {lost}; turns resent: {resends}; "
        f"replies ended by the sweeper as errors: {errors}"
    )
    assert lost == 0


async def test_thoughts_and_smooth_text_reach_a_device_on_the_other_replica(
    replicas: Callable[..., list[Replica]],
) -> None:
    a, b = replicas(2)
    user = new_user()
    sender = await on(a, user)
    watcher = await Client.connect(b.ws)
    await watcher.hello(user, options=SessionOptions(thoughts=True, smooth_streaming=True))
    cid = await sender.create()
    await join(watcher, cid)
    complex_turn = "Compare both offers in detail, step by step. " + directive(
        tokens=40, chunk=20, tps=80
    )
    await sender.send(Send(id="1", conversation_id=cid, text=complex_turn))
    await sender.expect(Ack)
    end, frames = await watcher.until(TurnEnd)
    assert end.usage.thought_tokens > 0
    assert any(isinstance(f, Thought) for f in frames), "thoughts cross the bus"
    words = deltas(frames)
    assert "".join(text for _, text in words) == end.message.text
    assert len(words) > 2, "bursts of 20 tokens arrive as words"
    await sender.close()
    await watcher.close()
