"""Smooth streaming: bursts re-split into words (characters for Japanese), paced within
a bound at the reply's end, reassembled exactly, on a real connection too."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from chat_server.hub import Event
from chat_server.smooth import MAX_END_DELAY_S, Smoother, pieces
from protocol.messages import (
    Ack,
    Delta,
    Send,
    SessionOptions,
    TurnEnd,
)
from tests.servers import RunningServer
from tests.wsclient import directive, two_devices

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there,  world. ", ["Hello ", "there,  ", "world. "]),
        ("今日は晴れ。", ["今", "日", "は", "晴", "れ", "。"]),
        (" lead 東京 ok", [" ", "lead ", "東", "京 ", "ok"]),
    ],
)
async def test_pieces_are_words_or_cjk_characters_and_join_back(
    text: str, expected: list[str] | None
) -> None:
    cut = pieces(text)
    assert "".join(cut) == text
    if expected is not None:
        assert cut == expected


def delta(turn_id: uuid.UUID, offset: int, text: str) -> Event:
    return Event.of(Delta(conversation_id=uuid.uuid4(), turn_id=turn_id, offset=offset, text=text))


async def test_bursts_flow_as_words_and_the_end_waits_at_most_the_bound() -> None:
    out: list[tuple[float, Event]] = []
    done = asyncio.Event()

    def emit(event: Event) -> None:
        out.append((time.monotonic(), event))
        if event.kind == "turn_end":
            done.set()

    smoother = Smoother(emit)
    turn = uuid.uuid4()
    burst = "one two three four five six seven eight nine ten " * 4  # 40 words
    smoother.push(delta(turn, 0, burst))
    await asyncio.sleep(0.4)
    smoother.push(delta(turn, len(burst), burst))
    ended = time.monotonic()
    end = Event(kind="turn_end", frame="{}", turn_id=turn, seq=3)
    smoother.end(end)
    await asyncio.wait_for(done.wait(), 5)
    assert out[-1][1] is end, "the turn_end goes out last"
    deltas = [e for _, e in out if e.kind == "delta"]
    assert "".join(e.text for e in deltas) == burst * 2, "reassembles exactly"
    offsets = [e.offset for e in deltas]
    assert offsets == [sum(len(e.text) for e in deltas[:i]) for i in range(len(deltas))]
    assert len(deltas) >= 20, "a burst goes out as many small deltas"
    assert out[0][0] - ended < 0, "the first piece did not wait for the second burst"
    assert out[-1][0] - ended <= MAX_END_DELAY_S + 0.1, "the end waits at most the bound"
    assert not smoother.holds(turn)


async def test_a_smooth_device_gets_words_a_plain_one_gets_bursts(server: RunningServer) -> None:
    _, smooth, plain, cid = await two_devices(server.ws, SessionOptions(smooth_streaming=True))
    bursts = directive(tokens=60, chunk=20, tps=40)  # 20 tokens every 0.5 s
    await plain.send(Send(id="s", conversation_id=cid, text=f"tell me {bursts}"))
    await plain.expect(Ack)
    end, plain_frames = await plain.until(TurnEnd)
    smooth_end, smooth_frames = await smooth.until(TurnEnd)
    texts = {}
    for name, frames in (("plain", plain_frames), ("smooth", smooth_frames)):
        deltas = [f for f in frames if isinstance(f, Delta)]
        assert "".join(d.text for d in deltas) == end.message.text, name
        assert [d.offset for d in deltas] == [
            sum(len(d.text) for d in deltas[:i]) for i in range(len(deltas))
        ], name
        texts[name] = deltas
    assert smooth_end.message.text == end.message.text
    assert len(texts["plain"]) <= 4, "the model's bursts, relayed as they came"
    assert len(texts["smooth"]) >= 3 * len(texts["plain"]), "re-split into words"
    await smooth.close()
    await plain.close()
