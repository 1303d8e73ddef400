"""Speech chunks (``hello.options.speech_chunks``): a reply's text cut at phrase ends,
for text-to-speech front-ends. ``SpeechChunker`` is pure (text in, deltas out);
``Speech`` is the filter a session puts its delta events through: one chunker per
reply, and a timer that flushes after ``speech_max_wait_ms`` so a long sentence flows.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from chat_server.hub import Event
from protocol.messages import Delta

# Where a phrase may end for text-to-speech: Japanese/full-width punctuation at once,
# English punctuation only when followed by a space (so "3.14" or "e.g" stay whole).
PHRASE_END = re.compile(r"[。、！？，．…\n]|[.,;:!?](?:\s+)")


class SpeechChunker:
    """One reply's text held back until a phrase ends."""

    def __init__(self, conversation_id: uuid.UUID, turn_id: uuid.UUID, offset: int) -> None:
        self.conversation_id = conversation_id
        self.turn_id = turn_id
        self.offset = offset  # where ``pending`` starts in the reply
        self.pending = ""

    def push(self, text: str) -> Delta | None:
        """Add the reply's next text; the delta up to the last phrase end, if any."""
        self.pending += text
        cut = 0
        for match in PHRASE_END.finditer(self.pending):
            cut = match.end()
        return self._emit(cut)

    def flush(self) -> Delta | None:
        """Everything held (the maximum wait passed, or the reply ended)."""
        return self._emit(len(self.pending))

    def _emit(self, cut: int) -> Delta | None:
        if not cut:
            return None
        text, self.pending = self.pending[:cut], self.pending[cut:]
        delta = Delta(
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            offset=self.offset,
            text=text,
        )
        self.offset += cut
        return delta


@dataclass(eq=False)
class _Held:
    chunker: SpeechChunker
    timer: asyncio.TimerHandle | None = None


class Speech:
    """The delta events of a connection's replies, re-cut at phrase ends."""

    def __init__(self, emit: Callable[[Event], None], max_wait_s: float) -> None:
        self._emit = emit
        self._max_wait_s = max_wait_s
        self._replies: dict[uuid.UUID, _Held] = {}

    def push(self, event: Event) -> None:
        """A delta event of a reply: what completes a phrase goes out now."""
        assert event.conversation_id is not None
        assert event.turn_id is not None
        held = self._replies.get(event.turn_id)
        if held is None:
            chunker = SpeechChunker(event.conversation_id, event.turn_id, event.offset)
            held = self._replies[event.turn_id] = _Held(chunker)
        self._send(held, held.chunker.push(event.text))
        if held.chunker.pending and held.timer is None:
            held.timer = asyncio.get_running_loop().call_later(
                self._max_wait_s, self._timeout, held
            )

    def end(self, turn_id: uuid.UUID) -> None:
        """The reply ended: what is still held goes out (before its turn_end)."""
        held = self._replies.pop(turn_id, None)
        if held is not None:
            self._send(held, held.chunker.flush())
            if held.timer is not None:
                held.timer.cancel()

    def close(self) -> None:
        for held in self._replies.values():
            if held.timer is not None:
                held.timer.cancel()

    def _timeout(self, held: _Held) -> None:
        held.timer = None
        if self._replies.get(held.chunker.turn_id) is held:
            self._send(held, held.chunker.flush())

    def _send(self, held: _Held, delta: Delta | None) -> None:
        if delta is None:
            return
        if held.timer is not None:  # what is left starts its own wait
            held.timer.cancel()
            held.timer = None
        self._emit(Event.of(delta))
