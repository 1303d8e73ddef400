"""End to end: the real server under uvicorn, real WebSocket clients, real Postgres,
and replies from the simulator through google-genai."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage.models import Message as MessageRow
from protocol.messages import (
    Ack,
    Cancel,
    Delta,
    Error,
    History,
    HistoryPage,
    Input,
    InputEvent,
    Join,
    Joined,
    Leave,
    Left,
    Message,
    Ping,
    Pong,
    Send,
    TurnEnd,
    TurnStart,
    Typing,
    TypingEvent,
)
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user, reply_text

pytestmark = pytest.mark.asyncio


async def device(server: RunningServer, user: str) -> Client:
    client = await Client.connect(server.ws)
    await client.hello(user)
    return client


async def two_devices(
    server: RunningServer, title: str | None = None
) -> tuple[str, Client, Client, uuid.UUID]:
    """One user's two devices, both joined to a new conversation the first created."""
    user = new_user()
    first, second = await device(server, user), await device(server, user)
    cid = await first.create(title=title) if title else await first.create()
    await second.send(Join(conversation_id=cid))
    await second.expect(Joined)
    return user, first, second, cid


async def turn(client: Client, cid: uuid.UUID, text: str, id: str | None = None):  # type: ignore[no-untyped-def]
    """Send a turn; return its ack and every frame up to and including turn_end."""
    await client.send(Send(id=id or uuid.uuid4().hex, conversation_id=cid, text=text))
    ack = await client.expect(Ack)
    end, frames = await client.until(TurnEnd)
    return ack, [*frames, end]


async def streaming_turn(client: Client, text: str) -> tuple[uuid.UUID, TurnStart]:
    """A new conversation with a long, slow reply under way (one delta already out)."""
    cid = await client.create()
    await client.send(Send(id="c", conversation_id=cid, text=text + directive(tps=30, tokens=200)))
    await client.expect(Ack)
    start, _ = await client.until(TurnStart)
    return cid, start


async def rows(db: async_sessionmaker[AsyncSession], cid: uuid.UUID) -> list[MessageRow]:
    async with db() as s:
        result = await s.scalars(
            select(MessageRow).where(MessageRow.conversation_id == cid).order_by(MessageRow.seq)
        )
        return list(result)


# ------------------------------------------------------------------ streaming


async def test_two_devices_see_the_same_streamed_reply(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    _, phone, laptop, cid = await two_devices(server, title="plans")

    ack, phone_frames = await turn(phone, cid, "hello team")
    laptop_end, laptop_frames = await laptop.until(TurnEnd)
    laptop_frames.append(laptop_end)

    for frames in (phone_frames, laptop_frames):
        user_msg = next(f for f in frames if isinstance(f, Message))
        start = next(f for f in frames if isinstance(f, TurnStart))
        end = frames[-1]
        assert isinstance(end, TurnEnd)
        assert user_msg.seq == ack.seq == 1
        assert user_msg.message.text == "hello team"
        assert start.seq == end.seq == 2
        assert start.reply_to == ack.message_id
        assert end.finish_reason == "stop"
        assert reply_text(frames, start.turn_id) == end.message.text
        assert end.message.text.startswith("You said: hello team.")
    assert sum(isinstance(f, Delta) for f in laptop_frames) >= 5, "streamed, not one block"
    assert reply_text(phone_frames, start.turn_id) == reply_text(laptop_frames, start.turn_id)

    stored = await rows(db, cid)
    assert [(r.seq, r.role, r.status) for r in stored] == [
        (1, "user", "complete"),
        (2, "assistant", "complete"),
    ]
    assert stored[1].text == end.message.text
    assert stored[1].meta["finish_reason"] == "stop"
    assert stored[1].meta["route"]["reason"] == "default"
    assert stored[1].meta["usage"]["output_tokens"] > 0
    await phone.close()
    await laptop.close()


async def test_ack_is_sent_after_the_turn_is_committed(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    client = await device(server, new_user())
    cid = await client.create()
    await client.send(Send(id="c-1", conversation_id=cid, text="remember this"))
    ack = await client.expect(Ack)
    # Read through a separate connection right after the ack: it must be visible.
    stored = await rows(db, cid)
    assert stored[0].id == ack.message_id
    assert (stored[0].seq, stored[0].client_id, stored[0].text) == (1, "c-1", "remember this")
    await client.until(TurnEnd)
    await client.close()


async def test_generation_outlives_the_socket_that_asked_for_it(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    user = new_user()
    client, watcher = await device(server, user), await device(server, user)
    cid = await client.create()
    await watcher.send(Join(conversation_id=cid))
    await watcher.expect(Joined)
    await client.send(
        Send(id="x", conversation_id=cid, text="long one " + directive(tps=100, tokens=30))
    )
    await client.expect(Ack)
    await client.close()
    await watcher.until(TurnEnd)  # sent after the final write
    await watcher.close()
    stored = await rows(db, cid)
    assert stored[-1].status == "complete"
    assert len(stored[-1].text.split()) >= 30


# ------------------------------------------------------------------ idempotency


async def test_resend_same_id_returns_original_ack_and_starts_no_generation(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    client = await device(server, new_user())
    cid = await client.create()
    marker = uuid.uuid4().hex
    first, _ = await turn(client, cid, f"once {marker}", id="same")
    await client.send(Send(id="same", conversation_id=cid, text=f"once {marker}"))
    again = await client.expect(Ack)
    assert again.duplicate is True
    assert not first.duplicate
    assert (again.message_id, again.seq) == (first.message_id, first.seq)
    await client.send(Ping(id="after"))
    assert await client.expect(Pong) == Pong(id="after")  # no message/turn_start in between
    assert len(await rows(db, cid)) == 2
    calls = [r for r in sim_requests() if marker in str(r["body"])]
    assert len(calls) == 1
    await client.close()


async def test_same_id_from_two_devices_at_once_stores_one_turn(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    _, a, b, cid = await two_devices(server)
    marker = uuid.uuid4().hex
    send = Send(id="retry-1", conversation_id=cid, text=f"race {marker}")
    await asyncio.gather(a.send(send), b.send(send))
    acks = [(await a.until(Ack))[0], (await b.until(Ack))[0]]
    assert {x.message_id for x in acks} == {acks[0].message_id}
    assert sorted(x.duplicate for x in acks) == [False, True]
    await a.until(TurnEnd)
    assert [r.role for r in await rows(db, cid)] == ["user", "assistant"]
    assert len([r for r in sim_requests() if marker in str(r["body"])]) == 1
    await a.close()
    await b.close()


# ------------------------------------------------------------------ resume


async def test_reconnect_with_after_seq_gets_exactly_the_missed_events(
    server: RunningServer,
) -> None:
    user = new_user()
    phone = await device(server, user)
    cid = await phone.create()
    _, frames = await turn(phone, cid, "first")
    held = frames[-1]
    assert isinstance(held, TurnEnd)
    await phone.close()

    laptop = await device(server, user)  # meanwhile, another device talks
    await laptop.send(Join(conversation_id=cid))
    await laptop.expect(Joined)
    await turn(laptop, cid, "second")
    await turn(laptop, cid, "third")

    phone = await device(server, user)
    await phone.send(Join(conversation_id=cid, after_seq=held.seq))
    joined = await phone.expect(Joined)
    assert joined.recovered is True
    assert joined.last_seq == 6
    replay = [await phone.expect(Message) for _ in range(4)]
    assert [m.seq for m in replay] == [3, 4, 5, 6]
    assert [m.message.role for m in replay] == ["user", "assistant", "user", "assistant"]
    assert replay[0].message.text == "second"
    assert all(m.message.status == "complete" for m in replay)
    await phone.send(Ping(id="end"))
    assert await phone.expect(Pong) == Pong(id="end")  # nothing else was sent
    await phone.close()
    await laptop.close()


async def test_device_joining_mid_stream_gets_text_so_far_then_live_deltas(
    server: RunningServer,
) -> None:
    user = new_user()
    phone = await device(server, user)
    cid = await phone.create()
    await phone.send(
        Send(id="slow", conversation_id=cid, text="go slow " + directive(tps=40, tokens=40))
    )
    await phone.expect(Ack)
    shown, _ = await phone.until(Delta)
    sent = shown.text
    while len(sent) <= 5:  # some text is out before the laptop arrives
        sent += (await phone.expect(Delta)).text

    laptop = await device(server, user)
    await laptop.send(Join(conversation_id=cid, after_seq=0))
    await laptop.expect(Joined)
    user_msg = await laptop.expect(Message)
    assert user_msg.seq == 1
    start = await laptop.expect(TurnStart)
    first = await laptop.expect(Delta)
    assert first.offset == 0
    assert len(first.text) > 5, "the text so far arrives as one catch-up delta"
    end, frames = await laptop.until(TurnEnd)
    assert reply_text([first, *frames], start.turn_id) == end.message.text
    phone_end, _ = await phone.until(TurnEnd)
    assert phone_end.message.text == end.message.text
    await phone.close()
    await laptop.close()


async def test_join_after_too_many_missed_events_is_not_recovered(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(replay_limit=3)
    user = new_user()
    client = await device(server, user)
    cid = await client.create()
    await turn(client, cid, "a")
    await turn(client, cid, "b")
    other = await device(server, user)
    await other.send(Join(conversation_id=cid, after_seq=0))
    joined = await other.expect(Joined)
    assert joined.recovered is False
    assert joined.last_seq == 4
    await other.send(Ping(id="p"))
    assert await other.expect(Pong) == Pong(id="p")  # no partial replay
    await client.close()
    await other.close()


async def test_history_pages_backwards_from_before_seq(server: RunningServer) -> None:
    client = await device(server, new_user())
    cid = await client.create()
    for word in ("one", "two", "three"):
        await turn(client, cid, word)
    await client.send(History(id="h1", conversation_id=cid, limit=4))
    page = await client.expect(HistoryPage)
    assert page.id == "h1"
    assert [m.seq for m in page.messages] == [3, 4, 5, 6]
    assert page.has_more is True
    await client.send(History(id="h2", conversation_id=cid, before_seq=3, limit=4))
    page = await client.expect(HistoryPage)
    assert [m.seq for m in page.messages] == [1, 2]
    assert page.messages[0].text == "one"
    assert page.has_more is False
    await client.close()


# ------------------------------------------------------------------ cancel


async def test_cancel_mid_stream_stores_the_partial_reply_as_interrupted(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    client = await device(server, new_user())
    cid, start = await streaming_turn(client, "talk ")
    await client.until(Delta)
    await client.send(Cancel(conversation_id=cid))
    end, frames = await client.until(TurnEnd, timeout=5)
    assert end.finish_reason == "cancelled"
    assert end.message.status == "interrupted"
    streamed = reply_text([*frames], start.turn_id)
    assert 0 < len(end.message.text) < 200 * 3
    assert end.message.text.startswith(streamed[: len(end.message.text)])
    stored = (await rows(db, cid))[-1]
    assert (stored.status, stored.text) == ("interrupted", end.message.text)
    await client.close()


async def test_cancel_with_heard_chars_keeps_exactly_what_was_heard(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    client = await device(server, new_user())
    cid, start = await streaming_turn(client, "speak ")
    text = ""
    while len(text) < 12:
        text += (await client.expect(Delta)).text
    await client.send(Cancel(conversation_id=cid, turn_id=start.turn_id, heard_chars=7))
    end, _ = await client.until(TurnEnd, timeout=5)
    assert end.finish_reason == "interrupted"
    assert end.message.text == text[:7]
    assert (await rows(db, cid))[-1].text == text[:7]

    # The next turn's model request carries the heard text, not the unheard rest.
    await turn(client, cid, "and then?")
    history = sim_requests()[-1]["body"]["contents"]
    assert history[-2] == {"role": "model", "parts": [{"text": text[:7]}]}
    assert history[-1]["parts"][0]["text"] == "and then?"
    await client.close()


async def test_cancel_with_nothing_streaming_is_an_error(server: RunningServer) -> None:
    client = await device(server, new_user())
    cid = await client.create()
    await client.send(Cancel(id="k", conversation_id=cid))
    error = await client.expect(Error)
    assert (error.id, error.code, error.retryable) == ("k", "no_active_turn", False)
    await client.close()


# ------------------------------------------------------------------ model failures


@pytest.mark.parametrize(
    ("fail", "finish", "status", "code", "retryable", "partial"),
    [
        ("429", "error", "error", "llm_rate_limited", True, False),
        ("500", "error", "error", "llm_unavailable", True, False),
        ("cut", "error", "error", "llm_unavailable", True, True),
        ("error_chunk", "error", "error", "llm_unavailable", True, True),
        ("safety", "safety", "complete", None, None, True),
        ("length", "length", "complete", None, None, True),
    ],
)
async def test_model_failures_end_the_turn_with_the_right_finish_reason(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    fail: str,
    finish: str,
    status: str,
    code: str | None,
    retryable: bool | None,
    partial: bool,
) -> None:
    client = await device(server, new_user())
    cid = await client.create()
    _, frames = await turn(client, cid, "x " + directive(fail=fail, after=3))
    end = frames[-1]
    assert isinstance(end, TurnEnd)
    assert end.finish_reason == finish
    assert end.message.status == status
    if code is None:
        assert end.error is None
    else:
        assert end.error is not None
        assert (end.error.code, end.error.retryable) == (code, retryable)
    stored = (await rows(db, cid))[-1]
    assert stored.status == status
    assert stored.text == end.message.text
    assert bool(stored.text) is partial
    await client.close()


async def test_a_429_after_retries_is_rate_limited_even_with_a_short_stall_bound(
    start_server: Callable[..., RunningServer],
) -> None:
    # The SDK backs off ~1-2 s before its second attempt: longer than the stall bound,
    # which used to end the turn as llm_unavailable ("model sent nothing").
    server = start_server(llm_stall_s=0.5, gemini_attempts=2)
    client = await device(server, new_user())
    cid = await client.create()
    _, frames = await turn(client, cid, "x " + directive(fail="429"))
    end = frames[-1]
    assert isinstance(end, TurnEnd)
    assert end.error is not None
    assert (end.finish_reason, end.error.code) == ("error", "llm_rate_limited")
    assert end.error.retry_after_ms == 1000, "the model's wait reaches the client"
    await client.close()


async def test_a_stalled_model_ends_the_turn_with_an_error(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(llm_stall_s=1.0)
    client = await device(server, new_user())
    cid = await client.create()
    _, frames = await turn(client, cid, "x " + directive(fail="stall", after=2))
    end = frames[-1]
    assert isinstance(end, TurnEnd)
    assert end.finish_reason == "error"
    assert end.error is not None
    assert "sent nothing" in end.error.message
    assert end.message.text == reply_text(frames, end.turn_id) != ""
    await client.close()


# ------------------------------------------------------------------ relays


async def test_a_burst_of_partials_is_thinned_but_the_newest_always_arrives(
    server: RunningServer,
) -> None:
    _, voice, screen, cid = await two_devices(server)
    words = [f"w{n}" for n in range(60)]
    for n in range(1, len(words) + 1):  # 60 partials as fast as the socket takes them
        await voice.send(Input(conversation_id=cid, input_id="u1", text=" ".join(words[:n])))
    for _ in range(3):  # typing repeated while nothing changed
        await voice.send(Typing(conversation_id=cid))
    seen: list[InputEvent] = []
    typing: list[TypingEvent] = []
    async with asyncio.timeout(5):
        while not seen or seen[-1].text != " ".join(words):
            frame = await screen.recv()
            if isinstance(frame, InputEvent):
                seen.append(frame)
            elif isinstance(frame, TypingEvent):
                typing.append(frame)
    assert len(seen) <= 10, f"{len(seen)} of 60 partials relayed"
    assert [p.text for p in seen] == sorted((p.text for p in seen), key=len), "in order"
    await screen.send(Ping(id="after"))
    _, rest = await screen.until(Pong)
    typing += [f for f in rest if isinstance(f, TypingEvent)]
    assert len(typing) == 1
    await voice.close()
    await screen.close()


async def test_partial_input_is_relayed_not_stored_and_final_commits(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    user, voice, screen, cid = await two_devices(server)

    await voice.send(Typing(conversation_id=cid))
    typing = await screen.expect(TypingEvent)
    assert (typing.user_id, typing.active) == (user, True)
    await voice.send(Input(conversation_id=cid, input_id="utt-1", text="book a"))
    partial = await screen.expect(InputEvent)
    assert (partial.input_id, partial.text, partial.final) == ("utt-1", "book a", False)
    assert await rows(db, cid) == []

    await voice.send(Input(conversation_id=cid, input_id="utt-1", text="book a table", final=True))
    ack, _ = await voice.until(Ack)
    assert (ack.id, ack.seq) == ("utt-1", 1)
    final, _ = await screen.until(InputEvent)
    assert final.final is True
    end, _ = await screen.until(TurnEnd)
    stored = await rows(db, cid)
    assert [(r.role, r.text) for r in stored] == [
        ("user", "book a table"),
        ("assistant", end.message.text),
    ]
    await voice.until(TurnEnd)

    await screen.send(Leave(id="bye", conversation_id=cid))
    assert await screen.expect(Left) == Left(id="bye", conversation_id=cid)
    await voice.send(Typing(conversation_id=cid))
    await screen.send(Ping(id="quiet"))
    assert await screen.expect(Pong) == Pong(id="quiet")  # left: no typing relayed
    await voice.close()
    await screen.close()
