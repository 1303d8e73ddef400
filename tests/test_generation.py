"""chat_server.turns without a server: a scripted model, the memory bus and in-flight state, real
Postgres. What a generation publishes and stores for each way a model stream can go."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import conversations
from chat_server.bus.memory import MemoryBus
from chat_server.config import Settings
from chat_server.hub import Event, Hub
from chat_server.inflight.memory import MemoryInflight
from chat_server.llm import LLMChunk, LLMError, LLMRequest
from chat_server.router.embedding import HashingEmbedder
from chat_server.storage import queries
from chat_server.storage.models import Message as MessageRow
from chat_server.turns import TurnRequest, Turns
from protocol import decode_server
from protocol.errors import ErrorCode
from protocol.messages import Ack, Delta, TurnEnd
from tests.wsclient import new_user

pytestmark = pytest.mark.asyncio


@dataclass
class ScriptedModel:
    """An LLMProvider that plays a script: text chunks, then a finish, an error, or a
    stall; it records the requests it was sent."""

    script: Callable[[], AsyncIterator[LLMChunk]]
    retry_budget_s: float = 0.0
    requests: list[LLMRequest] = field(default_factory=list)

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        self.requests.append(request)
        return self.script()

    async def aclose(self) -> None:
        return None


@dataclass(eq=False)
class Recorder:
    """A hub subscriber that keeps every event of a conversation."""

    id: str = "recorder"
    events: list[Any] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: Event) -> None:
        message = decode_server(event.frame) if event.frame else None
        self.events.append(message)
        if isinstance(message, TurnEnd):
            self.ended.set()

    def resync(self, conversation_id: uuid.UUID) -> None:
        return None


async def run_turn(
    db: async_sessionmaker[AsyncSession], model: ScriptedModel, **settings: Any
) -> tuple[Recorder, MessageRow, Turns]:
    hub = Hub(bus=MemoryBus(), node_id="n")
    turns = Turns(
        db=db,
        hub=hub,
        bus=hub.bus,
        inflight=MemoryInflight(),
        llm=model,
        embedder=HashingEmbedder(),
        settings=Settings(**({"llm_stall_s": 5.0} | settings)),
    )
    async with db.begin() as s:
        owner = await queries.ensure_user(s, new_user(), default_model="m")
        conversation = await conversations.create(s, owner.id, title=None, assistant_id=None)
    recorder = Recorder()
    await hub.join(conversation.id, recorder)
    acks: list[tuple[Ack, int]] = []  # each ack, and how many events were out before it
    request = TurnRequest(owner.id, conversation.id, "c1", "hello there")
    stored = await turns.submit(request, lambda ack: acks.append((ack, len(recorder.events))))
    assert stored.generation is not None
    assert acks == [(stored.ack, 0)], "acked once, before the message or turn_start went out"
    await asyncio.wait_for(recorder.ended.wait(), 10)
    async with db() as s:
        row = await s.get(MessageRow, stored.generation.turn_id)
    assert row is not None
    return recorder, row, turns


def chunks(*pieces: str, finish: str = "stop") -> Callable[[], AsyncIterator[LLMChunk]]:
    async def play() -> AsyncIterator[LLMChunk]:
        for piece in pieces:
            yield LLMChunk(text=piece)
            await asyncio.sleep(0)
        yield LLMChunk(text="", finish_reason=finish, input_tokens=3, output_tokens=len(pieces))

    return play


async def test_chunks_become_deltas_by_offset_and_the_stored_reply(
    db: async_sessionmaker[AsyncSession],
) -> None:
    model = ScriptedModel(chunks("Hel", "lo", ", you"))
    recorder, row, _ = await run_turn(db, model)
    deltas = [e for e in recorder.events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == "Hello, you"
    assert [d.offset for d in deltas] == [
        sum(len(d.text) for d in deltas[:i]) for i in range(len(deltas))
    ]
    end = recorder.events[-1]
    assert isinstance(end, TurnEnd)
    assert (end.finish_reason, end.usage.output_tokens) == ("stop", 3)
    assert (row.status, row.text) == ("complete", "Hello, you")
    assert model.requests[0].history[-1].text == "hello there"


async def test_a_rate_limit_ends_the_turn_with_the_models_wait(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async def refuse() -> AsyncIterator[LLMChunk]:
        raise LLMError(ErrorCode.LLM_RATE_LIMITED, "slow down", retry_after_ms=1500)
        yield LLMChunk(text="")  # pragma: no cover (makes this an async generator)

    recorder, row, _ = await run_turn(db, ScriptedModel(refuse))
    end = recorder.events[-1]
    assert isinstance(end, TurnEnd)
    assert end.error is not None
    assert (end.error.code, end.error.retry_after_ms) == ("llm_rate_limited", 1500)
    assert (row.status, row.text) == ("error", "")


async def test_a_stalled_model_ends_the_turn_keeping_the_text_so_far(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async def stall() -> AsyncIterator[LLMChunk]:
        yield LLMChunk(text="partial")
        await asyncio.sleep(30)
        yield LLMChunk(text="never")  # pragma: no cover

    recorder, row, _ = await run_turn(db, ScriptedModel(stall), llm_stall_s=0.2)
    end = recorder.events[-1]
    assert isinstance(end, TurnEnd)
    assert end.error is not None
    assert end.error.code == "llm_unavailable"
    assert (row.status, row.text) == ("error", "partial")


async def test_nul_from_the_model_is_stored_with_the_same_length(
    db: async_sessionmaker[AsyncSession],
) -> None:
    recorder, row, _ = await run_turn(db, ScriptedModel(chunks("a\x00b")))
    shown = "".join(e.text for e in recorder.events if isinstance(e, Delta))
    assert shown == row.text == "a\ufffdb"
