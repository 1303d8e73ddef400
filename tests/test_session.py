"""The session's outbox: bounded, coalescing deltas under pressure, trimming overlaps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from chat_server.bus.memory import MemoryBus
from chat_server.config import Settings
from chat_server.hub import Event
from chat_server.inflight.memory import MemoryInflight
from chat_server.llm.gemini import GeminiProvider
from chat_server.presence.memory import MemoryPresence
from chat_server.router.embedding import HashingEmbedder
from chat_server.runtime import Runtime
from chat_server.session import Session, SessionState
from chat_server.storage.db import make_engine, make_sessionmaker
from protocol import decode_server, encode
from protocol.errors import CloseCode
from protocol.messages import (
    AssistantRef,
    Delta,
    InputEvent,
    Message,
    MessageInfo,
    MessageStatus,
    Role,
    RouteInfo,
    TurnStart,
)

pytestmark = pytest.mark.asyncio

CONV = uuid.uuid4()
TURN = uuid.uuid4()


class GatedTransport:
    """A client that reads only when the test opens the gate."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send_text(self, data: str) -> None:
        self.waiting.set()
        await self.gate.wait()
        self.frames.append(decode_server(data))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def ready_session(
    transport: GatedTransport, outbox_frames: int = 100, outbox_bytes: int = 1 << 20
) -> Session:
    """A session past hello with CONV joined and live, on a runtime wired as the app wires
    it, with memory backends (nothing here reaches Postgres: the engine never connects)."""
    settings = Settings(outbox_frames=outbox_frames, outbox_bytes=outbox_bytes)
    runtime = Runtime.wire(
        settings,
        db=make_sessionmaker(make_engine("postgresql+asyncpg://unused@127.0.0.1:9/none")),
        bus=MemoryBus(),
        inflight=MemoryInflight(),
        presence=MemoryPresence(),
        llm=GeminiProvider(api_key="unused", base_url="http://127.0.0.1:9", attempts=1),
        embedder=HashingEmbedder(),
    )
    session = Session(runtime, transport)
    session.state = SessionState.READY
    # as if its turn_start had been delivered: the client has 0 characters of TURN
    session.delivery.open(CONV, {TURN: 0}).go_live()
    return session


def delta(offset: int, text: str) -> Event:
    return Event.of(Delta(conversation_id=CONV, turn_id=TURN, offset=offset, text=text))


def message(seq: int) -> Event:
    info = MessageInfo(
        id=uuid.uuid4(),
        seq=seq,
        role=Role.USER,
        text="m",
        status=MessageStatus.COMPLETE,
        created_at="2026-01-01T00:00:00+00:00",
    )
    return Event.of(Message(conversation_id=CONV, seq=seq, message=info))


async def test_deltas_queued_behind_a_slow_socket_merge_into_one_frame() -> None:
    transport = GatedTransport()
    session = ready_session(transport)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(delta(0, "Hel"))
    await transport.waiting.wait()  # the writer holds the first frame
    for offset, text in [(3, "lo"), (5, ", "), (7, "wor"), (10, "ld")]:
        session.deliver(delta(offset, text))
    assert len(session.writer.outbox) == 1
    session.request_close(CloseCode.NORMAL, "", flush=True)
    transport.gate.set()
    await asyncio.wait_for(writer, 5)
    assert [(f.offset, f.text) for f in transport.frames] == [(0, "Hel"), (3, "lo, world")]
    assert transport.closed == (1000, "")


async def test_a_client_that_falls_too_far_behind_is_closed_as_slow_consumer() -> None:
    transport = GatedTransport()
    session = ready_session(transport, outbox_frames=4)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(message(1))
    await transport.waiting.wait()
    for seq in range(2, 10):
        session.deliver(message(seq))
    assert session.state is SessionState.CLOSING
    assert not session.writer.outbox, "queued frames are dropped; the client resumes with after_seq"
    transport.gate.set()
    await asyncio.wait_for(writer, 5)
    assert transport.closed is not None
    assert transport.closed[0] == CloseCode.SLOW_CONSUMER == 4000
    assert len(transport.frames) == 1


def partial(input_id: str, text: str, final: bool = False) -> Event:
    return Event.of(
        InputEvent(conversation_id=CONV, input_id=input_id, text=text, final=final, user_id="alice")
    )


async def test_a_newer_partial_replaces_the_queued_one_from_the_same_source() -> None:
    transport = GatedTransport()
    session = ready_session(transport, outbox_frames=8, outbox_bytes=64 * 1024)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(partial("u1", "c"))
    await transport.waiting.wait()  # the writer holds the first frame
    for n in range(2, 500):  # 500 partials of up to 2 KB: no bound is reached
        session.deliver(partial("u1", "c" * (n * 4)))
    session.deliver(partial("u1", "done", final=True))  # a final one is never replaced
    assert len(session.writer.outbox) == 2
    assert session.state is SessionState.READY
    session.request_close(CloseCode.NORMAL, "", flush=True)
    transport.gate.set()
    await asyncio.wait_for(writer, 5)
    assert [(f.text, f.final) for f in transport.frames] == [
        ("c", False),
        ("c" * 499 * 4, False),
        ("done", True),
    ]
    assert session.writer.outbox.bytes == 0


async def test_a_stalled_reader_is_bounded_in_bytes_not_only_frames() -> None:
    transport = GatedTransport()
    session = ready_session(transport, outbox_frames=1000, outbox_bytes=64 * 1024)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(partial("u0", "x"))
    await transport.waiting.wait()
    for n in range(1, 20):  # distinct utterances of 8 KB: 160 KB, far under 1000 frames
        session.deliver(partial(f"u{n}", "x" * 8192))
        if session.state is SessionState.CLOSING:
            break
    assert session.state is SessionState.CLOSING
    assert n <= 9, "closed once 64 KB were queued"
    transport.gate.set()
    await asyncio.wait_for(writer, 5)
    assert transport.closed is not None
    assert transport.closed[0] == CloseCode.SLOW_CONSUMER


async def test_merged_deltas_keep_the_byte_count_exact() -> None:
    transport = GatedTransport()
    session = ready_session(transport)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(delta(0, "a"))
    await transport.waiting.wait()
    for offset in range(1, 200):
        session.deliver(delta(offset, "b"))
    assert 0 < session.writer.outbox.bytes < 1000
    session.request_close(CloseCode.NORMAL, "", flush=True)
    transport.gate.set()
    await asyncio.wait_for(writer, 5)
    assert session.writer.outbox.bytes == 0


async def test_overlapping_deltas_are_trimmed_to_the_new_text() -> None:
    transport = GatedTransport()
    transport.gate.set()
    session = ready_session(transport)
    writer = asyncio.create_task(session.writer.run())
    session.deliver(delta(0, "abc"))
    session.deliver(delta(0, "abc"))  # an exact repeat
    session.deliver(delta(1, "bcde"))  # overlaps two characters
    session.request_close(CloseCode.NORMAL, "", flush=True)
    await asyncio.wait_for(writer, 5)
    texts = [(f.offset, f.text) for f in transport.frames]
    assert "".join(t for _, t in texts) == "abcde"
    offsets = [o for o, _ in texts]
    assert offsets == [sum(len(t) for _, t in texts[:i]) for i in range(len(texts))]


async def test_events_of_conversations_not_joined_are_ignored() -> None:
    transport = GatedTransport()
    transport.gate.set()
    session = ready_session(transport)
    other = Event.of(Delta(conversation_id=uuid.uuid4(), turn_id=TURN, offset=0, text="x"))
    session.deliver(other)
    assert not session.writer.outbox


async def test_a_delta_ahead_of_the_sent_text_is_repaired_from_shared_state() -> None:
    transport = GatedTransport()
    transport.gate.set()
    session = ready_session(transport)
    inflight = session._rt.turns.inflight
    start = TurnStart(
        conversation_id=CONV,
        seq=2,
        turn_id=TURN,
        reply_to=uuid.uuid4(),
        assistant=AssistantRef(id=uuid.uuid4(), name="a"),
        model="m",
        route=RouteInfo(reason="default"),
    )
    await inflight.begin(TURN, CONV, encode(start), "other-node")
    await inflight.append(TURN, "Hello, wor")
    writer = asyncio.create_task(session.writer.run())
    session.deliver(delta(0, "Hel"))
    session.deliver(delta(7, "wor"))  # "lo, " was lost on the way
    for _ in range(100):
        if session.delivery.replies.offsets.get(TURN) == 10:
            break
        await asyncio.sleep(0.01)
    session.deliver(delta(10, "ld"))
    session.request_close(CloseCode.NORMAL, "", flush=True)
    await asyncio.wait_for(writer, 5)
    deltas = [f for f in transport.frames if isinstance(f, Delta)]
    text = ""
    for d in deltas:
        assert d.offset == len(text), "no gap and no overlap reaches the client"
        text += d.text
    assert text == "Hello, world"
