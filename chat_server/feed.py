"""Exactly-once delivery to one connection, per conversation: pure.

``ConversationFeed.accept(event)`` decides what of a conversation event the connection
still needs: stored messages go out once (by ``seq``), a reply's text goes out once
(deltas trimmed by ``offset``), and a delta ahead of the text sent so far is held back
with a repair request (the session fetches the missing text from the shared state).
While a join replays from Postgres (``REPLAYING``), live events wait in a bounded
buffer; ``go_live`` hands them over once the replay is queued.

Nothing here awaits, touches a socket or a database, or reads a clock: the session
does the I/O (replay, repair, speech chunks, the outbox) around it.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from chat_server.hub import Event

FINISHED_MEMORY = 256  # recently finished turns remembered, to drop their late events


class FeedState(enum.Enum):
    REPLAYING = "replaying"  # joined; stored events are being read; live ones wait
    LIVE = "live"


@dataclass
class Replies:
    """How much of each reply one connection has been sent. Shared by the connection's
    feeds (turn ids are unique), so it outlives a leave and a repeated join."""

    offsets: dict[uuid.UUID, int] = field(default_factory=dict)  # turn → chars queued
    finished: dict[uuid.UUID, None] = field(default_factory=dict)  # ordered set, newest last

    def finish(self, turn_id: uuid.UUID) -> None:
        self.offsets.pop(turn_id, None)
        self.finished[turn_id] = None
        if len(self.finished) > FINISHED_MEMORY:
            del self.finished[next(iter(self.finished))]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What to send for one event (nothing, it, or its new part), and which reply's
    text must be repaired first (a delta arrived ahead of what was sent)."""

    events: tuple[Event, ...] = ()
    repair: uuid.UUID | None = None


_DROP = Accepted()


class ConversationFeed:
    def __init__(self, conversation_id: uuid.UUID, replies: Replies, *, buffer_limit: int):
        self.conversation_id = conversation_id
        self.state = FeedState.REPLAYING
        self.floor = 0  # every seq <= floor is held by the client (or was not asked for)
        self._replies = replies
        self._complete: set[int] = set()  # seqs above floor already sent
        self._buffer: list[Event] = []
        self._buffer_limit = buffer_limit

    # ------------------------------------------------------------------ join phase

    def hold(self, event: Event) -> bool:
        """Keep a live event until the replay is queued; False when too many arrived
        meanwhile (the session closes the client as slow)."""
        if self.state is not FeedState.REPLAYING:
            raise RuntimeError(f"expected {FeedState.REPLAYING.name}, got {self.state.name}")
        if len(self._buffer) >= self._buffer_limit:
            return False
        self._buffer.append(event)
        return True

    def go_live(self) -> list[Event]:
        """End the replay: the events that waited, to be accepted in order."""
        held, self._buffer = self._buffer, []
        self.state = FeedState.LIVE
        return held

    # ------------------------------------------------------------------ delivery

    def seen(self, seq: int) -> bool:
        return seq <= self.floor or seq in self._complete

    def mark(self, seq: int) -> None:
        if seq > self.floor:
            self._complete.add(seq)
            while self.floor + 1 in self._complete:
                self.floor += 1
                self._complete.discard(self.floor)

    def accept(self, event: Event) -> Accepted:
        replies, turn_id = self._replies, event.turn_id
        if event.kind in ("message", "turn_end"):
            in_progress = turn_id is not None and turn_id in replies.offsets
            if not in_progress and (self.seen(event.seq) or turn_id in replies.finished):
                return _DROP
            self.mark(event.seq)
            if turn_id is not None:
                replies.finish(turn_id)
        elif event.kind == "turn_start" and turn_id is not None:
            if turn_id in replies.offsets or turn_id in replies.finished:
                return _DROP
            replies.offsets[turn_id] = 0
        elif event.kind == "delta" and turn_id is not None:
            if turn_id in replies.finished:
                return _DROP
            have = replies.offsets.get(turn_id)
            if have is None or event.offset > have:
                return Accepted(repair=turn_id)
            end = event.offset + len(event.text)
            if end <= have:
                return _DROP
            if event.offset < have:
                event = event.with_text(have, event.text[have - event.offset :])
            replies.offsets[turn_id] = end
        return Accepted(events=(event,))
