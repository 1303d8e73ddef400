"""Voice front-ends: clients that stream partial transcripts, talk over replies, want
replies in whole phrases for text-to-speech, and resume mid-call without a seam."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage.models import Message as MessageRow
from chat_server.turns import TurnRequest
from protocol.messages import (
    Ack,
    Delta,
    Error,
    Hello,
    Input,
    InterruptOn,
    Join,
    Joined,
    Send,
    SessionOptions,
    TurnEnd,
    TurnStart,
    Welcome,
)
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user, reply_text

pytestmark = pytest.mark.asyncio

# A phrase ends at Japanese punctuation, or English punctuation followed by a space.
PHRASE_END = re.compile(r"([。、！？，．…\n]|[.,;:!?]\s+)$")


async def voice(server: RunningServer, user: str, **options: Any) -> Client:
    client = await Client.connect(server.ws)
    await client.send(Hello(token=user, options=SessionOptions(**options)))
    await client.expect(Welcome)
    return client


async def test_speech_chunks_end_only_at_phrase_boundaries(server: RunningServer) -> None:
    client = await voice(server, new_user(), speech_chunks=True, speech_max_wait_ms=3000)
    cid = await client.create()
    reply = "Hello there, friend. こんにちは、世界。 Pi is 3.14 today! Really? Yes"
    await client.send(
        Send(id="s", conversation_id=cid, text="hi " + directive(tps=60, reply=f'"{reply}"'))
    )
    await client.expect(Ack)
    end, frames = await client.until(TurnEnd)
    chunks = [f.text for f in frames if isinstance(f, Delta)]
    assert reply_text(frames, end.turn_id) == reply == end.message.text
    assert len(chunks) >= 4
    for chunk in chunks[:-1]:
        assert PHRASE_END.search(chunk), f"cut inside a phrase: {chunk!r}"
    assert not any(c.endswith("3.") for c in chunks), "a decimal point is not a sentence end"
    assert chunks[-1].endswith("Yes")  # the unfinished tail goes out with the turn's end
    await client.close()


async def test_speech_chunks_flush_a_long_sentence_at_the_maximum_wait(
    server: RunningServer,
) -> None:
    client = await voice(server, new_user(), speech_chunks=True, speech_max_wait_ms=150)
    cid = await client.create()
    words = " ".join(f"word{i}" for i in range(30))  # no punctuation at all
    await client.send(
        Send(id="s", conversation_id=cid, text="x " + directive(tps=30, reply=f'"{words}"'))
    )
    await client.expect(Ack)
    await client.until(TurnStart)
    arrivals: list[float] = []
    texts: list[str] = []
    while True:
        frame = await client.recv()
        if isinstance(frame, TurnEnd):
            break
        assert isinstance(frame, Delta)
        arrivals.append(time.monotonic())
        texts.append(frame.text)
    assert "".join(texts) == words
    assert len(texts) >= 4, "the sentence flowed in pieces instead of waiting for its end"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.6, f"waited longer than the maximum: {gaps}"
    await client.close()


async def test_a_new_final_input_interrupts_the_reply_keeping_what_was_heard(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    client = await voice(server, new_user())  # interrupt_on=final is the default
    cid = await client.create()
    await client.send(
        Input(
            conversation_id=cid,
            input_id="u1",
            text="tell me a story " + directive(tps=30, tokens=200),
            final=True,
        )
    )
    await client.until(Ack)
    start, _ = await client.until(TurnStart)
    heard = ""
    while len(heard) < 15:
        heard += (await client.expect(Delta)).text
    await client.send(
        Input(conversation_id=cid, input_id="u2", text="stop, shorter", final=True, heard_chars=9)
    )
    first_end, _ = await client.until(TurnEnd)
    assert first_end.turn_id == start.turn_id
    assert first_end.finish_reason == "interrupted"
    assert first_end.message.text == heard[:9]
    ack, _ = await client.until(Ack)
    assert ack.id == "u2"
    second_end, _ = await client.until(TurnEnd)
    assert second_end.finish_reason == "stop"
    contents = sim_requests()[-1]["body"]["contents"]
    assert contents[-2] == {"role": "model", "parts": [{"text": heard[:9]}]}
    assert contents[-1]["parts"][0]["text"] == "stop, shorter"
    async with db() as s:
        statuses = list(
            await s.scalars(
                select(MessageRow.status)
                .where(MessageRow.conversation_id == cid)
                .order_by(MessageRow.seq)
            )
        )
    assert statuses == ["complete", "interrupted", "complete", "complete"]
    await client.close()


async def test_with_interrupt_on_never_the_reply_runs_to_its_end(server: RunningServer) -> None:
    client = await voice(server, new_user(), interrupt_on=InterruptOn.NEVER)
    cid = await client.create()
    await client.send(
        Input(conversation_id=cid, input_id="u1", text="go " + directive(tokens=20), final=True)
    )
    await client.until(Ack)
    await client.until(Delta)
    await client.send(Input(conversation_id=cid, input_id="u2", text="and more", final=True))
    first_end, _ = await client.until(TurnEnd)
    assert first_end.finish_reason == "stop"
    await client.until(TurnEnd)
    await client.close()


async def test_early_routing_never_uses_a_history_that_changed_before_the_final_input(
    server: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    client = await voice(server, new_user(), interrupt_on=InterruptOn.NEVER)
    cid = await client.create()
    await client.send(Send(id="t1", conversation_id=cid, text="first " + directive(tokens=15)))
    await client.expect(Ack)
    await client.until(Delta)
    # The user starts speaking while the reply still streams: partials prepare ahead.
    for text in ("what", "what about", "what about tomorrow"):
        await client.send(Input(conversation_id=cid, input_id="u", text=text))
    first_end, _ = await client.until(TurnEnd)
    await client.send(
        Input(conversation_id=cid, input_id="u", text="what about tomorrow?", final=True)
    )
    await client.until(Ack)
    await client.until(TurnEnd)
    contents = sim_requests()[-1]["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"][0]["text"] == first_end.message.text  # the finished reply
    assert contents[2]["parts"][0]["text"] == "what about tomorrow?"
    await client.close()


async def test_early_routing_with_a_settled_history_gives_the_same_model_request(
    server: RunningServer,
    sim_requests: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Spies on the server's own Turns (it runs in this process, on another thread): the
    # prepared path must really run and be used, or the comparison proves nothing.
    turns = server.server.config.loaded_app.app.state.runtime.turns
    prepared_ready = threading.Event()
    used_prepared: list[bool] = []
    prepare, store = turns.prepare, turns.intake.store

    async def prepare_spy(**kwargs: Any) -> Any:
        try:
            return await prepare(**kwargs)
        finally:
            prepared_ready.set()

    async def store_spy(request: TurnRequest) -> Any:
        used_prepared.append(request.prepared is not None)
        return await store(request)

    monkeypatch.setattr(turns, "prepare", prepare_spy)
    monkeypatch.setattr(turns.intake, "store", store_spy)
    bodies = []
    for early in (True, False):
        prepared_ready.clear()
        used_prepared.clear()
        client = await voice(server, new_user(), early_routing=early)
        cid = await client.create()
        await client.send(Send(id="t1", conversation_id=cid, text="hello " + directive(tokens=5)))
        await client.until(TurnEnd)
        await client.send(Input(conversation_id=cid, input_id="u", text="book"))
        if early:  # the prepared route and history are ready
            assert await asyncio.to_thread(prepared_ready.wait, 10)
        await client.send(Input(conversation_id=cid, input_id="u", text="book it", final=True))
        await client.until(Ack)
        await client.until(TurnEnd)
        assert used_prepared == [False, early], "the final input used what was prepared"
        body = sim_requests()[-1]["body"]
        bodies.append((body["contents"][1:], body.get("systemInstruction")))
        await client.close()
    assert bodies[0] == bodies[1]


async def test_resuming_mid_reply_with_offsets_repeats_no_word(server: RunningServer) -> None:
    user = new_user()
    client = await voice(server, user)
    cid = await client.create()
    await client.send(
        Send(id="t", conversation_id=cid, text="a long answer " + directive(tps=30, tokens=60))
    )
    ack = await client.expect(Ack)
    start, _ = await client.until(TurnStart)
    heard = ""
    while len(heard) < 20:
        heard += (await client.expect(Delta)).text
    await client.close()  # the phone bridge hands the call over

    client = await voice(server, user)
    await client.send(
        Join(conversation_id=cid, after_seq=ack.seq, offsets={start.turn_id: len(heard)})
    )
    await client.expect(Joined)
    first = await client.expect(Delta)  # no second turn_start: the client has it
    assert first.turn_id == start.turn_id
    assert first.offset == len(heard)
    rest = first.text
    end, frames = await client.until(TurnEnd)
    rest += "".join(f.text for f in frames if isinstance(f, Delta))
    assert heard + rest == end.message.text
    await client.close()


async def test_partials_of_another_user_conversation_are_refused(server: RunningServer) -> None:
    owner = await voice(server, new_user())
    cid = await owner.create()
    other = await voice(server, new_user())
    await other.send(Input(id="p", conversation_id=cid, input_id="x", text="hi"))
    error = await other.expect(Error)
    assert (error.id, error.code) == ("p", "not_joined")
    await owner.close()
    await other.close()


async def test_phrase_pattern_matches_the_servers() -> None:
    from chat_server.speech import PHRASE_END as SERVERS

    for text, cut in [("Hello, wor", 7), ("3.14 is", 0), ("はい、そう。で", 6), ("Why? ", 5)]:
        ends = [m.end() for m in SERVERS.finditer(text)]
        assert (ends[-1] if ends else 0) == cut, text


async def test_with_interrupt_on_partial_the_first_partial_stops_the_reply(
    server: RunningServer,
) -> None:
    client = await voice(server, new_user(), interrupt_on=InterruptOn.PARTIAL)
    cid = await client.create()
    await client.send(Send(id="t", conversation_id=cid, text="go " + directive(tps=30, tokens=200)))
    await client.expect(Ack)
    start, _ = await client.until(TurnStart)
    await client.until(Delta)
    await client.send(Input(conversation_id=cid, input_id="u", text="wait", heard_chars=2))
    end, _ = await client.until(TurnEnd, timeout=5)
    assert (end.turn_id, end.finish_reason, len(end.message.text)) == (
        start.turn_id,
        "interrupted",
        2,
    )
    # Later partials of the same utterance, and its final, interrupt nothing more.
    await client.send(Input(conversation_id=cid, input_id="u", text="wait a"))
    await client.send(Input(conversation_id=cid, input_id="u", text="wait a sec", final=True))
    ack, _ = await client.until(Ack)
    assert ack.id == "u"
    second, _ = await client.until(TurnEnd)
    assert second.finish_reason == "stop"
    await client.close()
