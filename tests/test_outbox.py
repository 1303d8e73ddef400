"""outbox.py, pure: merging, superseding and both bounds, fed events directly."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from chat_server.hub import Event
from chat_server.outbox import Outbox, size
from protocol import decode_server
from protocol.messages import Delta, InputEvent, TypingEvent

CONV, TURN = uuid.uuid4(), uuid.uuid4()


def delta(offset: int, text: str, turn: uuid.UUID = TURN) -> Event:
    return Event.of(Delta(conversation_id=CONV, turn_id=turn, offset=offset, text=text))


def partial(input_id: str, text: str, final: bool = False) -> Event:
    return Event.of(
        InputEvent(conversation_id=CONV, input_id=input_id, text=text, final=final, user_id="u")
    )


def drain(outbox: Outbox) -> list[object]:
    frames = []
    while (event := outbox.pop()) is not None:
        frames.append(decode_server(event.frame))
    return frames


def test_adjacent_deltas_of_one_reply_merge_and_others_do_not() -> None:
    outbox = Outbox(max_frames=10, max_bytes=1 << 20)
    other = uuid.uuid4()
    for event in (delta(0, "He"), delta(2, "llo"), delta(0, "x", other), delta(5, "!")):
        assert outbox.push(event)
    frames = drain(outbox)
    assert [(f.turn_id, f.offset, f.text) for f in frames] == [  # type: ignore[attr-defined]
        (TURN, 0, "Hello"),
        (other, 0, "x"),
        (TURN, 5, "!"),
    ]
    assert outbox.bytes == 0


def test_the_frame_bound_refuses_the_frame_after_it() -> None:
    outbox = Outbox(max_frames=2, max_bytes=1 << 20)
    assert outbox.push(partial("a", "1"))
    assert outbox.push(partial("b", "2"))
    assert not outbox.push(partial("c", "3"))
    assert outbox.push(delta(0, "merges into nothing: a new frame")) is False


def test_a_newer_partial_or_typing_state_replaces_the_queued_one() -> None:
    outbox = Outbox(max_frames=3, max_bytes=1 << 20)
    for n in range(50):
        assert outbox.push(partial("a", "w" * n))
        typing = TypingEvent(conversation_id=CONV, user_id="u", session_id="s", active=n % 2 == 0)
        assert outbox.push(Event.of(typing))
    assert outbox.push(partial("a", "final", final=True))
    frames = drain(outbox)
    assert [type(f).__name__ for f in frames] == ["InputEvent", "TypingEvent", "InputEvent"]
    assert frames[0].text == "w" * 49  # type: ignore[attr-defined]
    assert frames[1].active is False  # type: ignore[attr-defined]
    assert frames[2].final is True  # type: ignore[attr-defined]


def test_the_byte_bound_holds_whatever_the_frame_count() -> None:
    outbox = Outbox(max_frames=1000, max_bytes=64 * 1024)
    pushed = 0
    while outbox.push(partial(f"u{pushed}", "x" * 8192)):
        pushed += 1
    assert 6 <= pushed <= 8
    assert outbox.bytes > 64 * 1024


@given(st.lists(st.tuples(st.sampled_from(["d", "p", "t"]), st.text(max_size=30)), max_size=60))
def test_the_byte_count_is_exact_through_merges_and_replacements(
    ops: list[tuple[str, str]],
) -> None:
    outbox = Outbox(max_frames=10_000, max_bytes=1 << 30)
    offset = 0
    for kind, text in ops:
        if kind == "d":
            event = delta(offset, text)
            offset += len(text)
        elif kind == "p":
            event = partial("one", text)
        else:
            event = Event.of(
                TypingEvent(conversation_id=CONV, user_id="u", session_id="s", active=bool(text))
            )
        outbox.push(event)
        held = list(outbox._events)
        assert outbox.bytes == sum(size(e) for e in held)
    drain(outbox)
    assert outbox.bytes == 0
