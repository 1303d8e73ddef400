"""Smooth streaming (``hello.options.smooth_streaming``): a model's bursts (Gemini sends
tens of tokens a chunk) re-split into word-sized deltas (a character each for Japanese
and Chinese) and paced so the text flows evenly instead of jumping.

``pieces`` is pure. ``Smoother`` is the filter a session puts its reply events through:
the first piece of a burst goes out at once (no added latency to the first token), the
rest are spread over the time the next burst is expected to take (a moving average of
the gaps between bursts, at most ``MAX_WINDOW_S``). When the reply ends, what is left
goes out within ``MAX_END_DELAY_S``, then the reply's ``message``/``turn_end``. Offsets
stay exact (one piece after the other); a client that reads slowly still gets the
pieces merged by its outbox, like any deltas.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from chat_server.hub import Event

# A word with the spaces after it; a CJK character (with trailing spaces) on its own.
_PIECE = re.compile(
    r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]\s*"
    r"|[^\s\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+\s*"
    r"|\s+"
)

MAX_END_DELAY_S = 0.3  # at most this much later than without smoothing, at a reply's end
MAX_WINDOW_S = 1.0  # a burst is never spread over more than this
MIN_TICK_S = 0.012  # pieces closer than this go out together
FIRST_WINDOW_S = 0.15  # the expected gap between bursts before any was seen


def pieces(text: str) -> list[str]:
    """Pure: ``text`` cut into words (with their trailing spaces) and CJK characters;
    joined they are ``text`` again."""
    return _PIECE.findall(text)


@dataclass(eq=False)
class _Reply:
    delta: Event  # a delta of this reply: what the pieces are made from
    offset: int  # where the next piece starts in the reply
    pieces: collections.deque[str] = field(default_factory=collections.deque)  # to send
    ended: list[Event] = field(default_factory=list)  # message/turn_end, after the pieces
    window_s: float = FIRST_WINDOW_S
    last_burst: float | None = None
    deadline: float | None = None  # the reply ended: everything out by then
    task: asyncio.Task[None] | None = None


class Smoother:
    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self._replies: dict[uuid.UUID, _Reply] = {}

    def push(self, event: Event) -> None:
        """A delta event of a reply (exactly once, in order: after the feed)."""
        assert event.turn_id is not None
        reply = self._replies.get(event.turn_id)
        now = time.monotonic()
        if reply is None:
            reply = self._replies[event.turn_id] = _Reply(event, event.offset)
        elif reply.last_burst is not None:
            gap = min(now - reply.last_burst, MAX_WINDOW_S)
            reply.window_s = 0.6 * reply.window_s + 0.4 * gap
        reply.last_burst = now
        if not reply.pieces and event.offset != reply.offset:
            reply.offset = event.offset  # a resync moved it: start from the event
        reply.pieces.extend(pieces(event.text))
        self._run(reply)

    def holds(self, turn_id: uuid.UUID) -> bool:
        return turn_id in self._replies

    def end(self, event: Event) -> None:
        """The reply's ``message`` or ``turn_end``: out after the text still held, which
        now drains within ``MAX_END_DELAY_S``."""
        assert event.turn_id is not None
        reply = self._replies[event.turn_id]
        if reply.deadline is None:
            reply.deadline = time.monotonic() + MAX_END_DELAY_S
        reply.ended.append(event)
        self._run(reply)

    def close(self) -> None:
        for reply in self._replies.values():
            if reply.task is not None:
                reply.task.cancel()
        self._replies.clear()

    def _run(self, reply: _Reply) -> None:
        if reply.task is None or reply.task.done():
            reply.task = asyncio.create_task(self._drain(reply))

    async def _drain(self, reply: _Reply) -> None:
        queue = reply.pieces
        while queue:
            window = reply.window_s
            if reply.deadline is not None:
                window = min(window, max(0.0, reply.deadline - time.monotonic()))
            per_piece = window / len(queue)
            take = max(1, math.ceil(MIN_TICK_S / per_piece)) if per_piece > 0 else len(queue)
            text = "".join(queue.popleft() for _ in range(min(take, len(queue))))
            self._emit(reply.delta.with_text(reply.offset, text, encoded=False))
            reply.offset += len(text)
            if queue:
                await asyncio.sleep(max(per_piece, MIN_TICK_S) if per_piece > 0 else 0)
        if reply.ended:  # the reply ended: its events go out, and what comes later passes
            for event in reply.ended:
                self._emit(event)
            self._replies.pop(reply.delta.turn_id, None)  # type: ignore[arg-type]
