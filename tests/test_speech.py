"""speech.py, pure: text in, phrase-sized deltas out, offsets exact."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from chat_server.speech import SpeechChunker

CONV, TURN = uuid.uuid4(), uuid.uuid4()


def test_text_is_held_until_a_phrase_ends_then_sent_with_its_offset() -> None:
    chunker = SpeechChunker(CONV, TURN, offset=10)
    assert chunker.push("Hello") is None
    first = chunker.push(", world. Pi is 3.14 and")
    assert first is not None
    assert (first.offset, first.text) == (10, "Hello, world. ")
    assert chunker.pending == "Pi is 3.14 and", "3.14 is not a phrase end"
    rest = chunker.flush()
    assert rest is not None
    assert (rest.offset, rest.text) == (24, "Pi is 3.14 and")
    assert chunker.flush() is None


def test_japanese_punctuation_ends_a_phrase_at_once() -> None:
    chunker = SpeechChunker(CONV, TURN, offset=0)
    out = chunker.push("はい、そうです。で")
    assert out is not None
    assert out.text == "はい、そうです。"
    assert chunker.pending == "で"


@given(st.lists(st.text(alphabet="ab .,、。!?\n3", max_size=12), max_size=20))
def test_the_deltas_are_the_text_in_order_with_no_gap(pieces: list[str]) -> None:
    chunker = SpeechChunker(CONV, TURN, offset=0)
    out = [d for d in (chunker.push(p) for p in pieces) if d is not None]
    last = chunker.flush()
    out += [last] if last is not None else []
    offset = 0
    for delta in out:
        assert delta.offset == offset
        offset += len(delta.text)
    assert "".join(d.text for d in out) == "".join(pieces)
