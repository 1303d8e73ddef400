"""The frames waiting for one client's socket: bounded, merging, pure.

``push`` queues an event or says the client fell too far behind; ``pop`` hands the
writer the next one. Nothing here awaits, touches a socket or reads a clock: the
session owns the one writer task and decides what a full outbox means (close 4000).

- Deltas of one reply that queue up behind a slow socket merge into one frame
  (encoded when sent).
- A live event that supersedes the queued one from the same source (a newer voice
  partial, a typing state) replaces it instead of queueing again.
- The bound is both in frames and in bytes: a stalled client costs at most
  ``max_bytes`` (plus one frame), however large its frames are.
"""

from __future__ import annotations

import collections

from chat_server.hub import Event

# A merged delta is encoded only when sent: count its text plus a frame's worth of fields.
DELTA_OVERHEAD = 200


def size(event: Event) -> int:
    return len(event.frame) if event.frame else len(event.text) + DELTA_OVERHEAD


class Outbox:
    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        # None while empty: a deque allocates a 64-slot block (~0.7 KiB) even when
        # empty, and most connections are idle most of the time.
        self._events: collections.deque[Event] | None = None
        self._superseding: dict[str, Event] = {}  # queued live events by their source

    def __len__(self) -> int:
        return len(self._events) if self._events is not None else 0

    def push(self, event: Event) -> bool:
        """Queue ``event``; False when that puts the client over a bound (slow consumer)."""
        if event.kind == "delta" and self._events:
            last = self._events[-1]
            if (
                last.kind == "delta"
                and last.turn_id == event.turn_id
                and last.offset + len(last.text) == event.offset
            ):
                # Behind on this reply already: one frame for both, encoded when sent.
                merged = last.with_text(last.offset, last.text + event.text, encoded=False)
                self._events[-1] = merged
                self.bytes += size(merged) - size(last)
                return self.bytes <= self.max_bytes
        queued = self._superseding.get(event.supersedes) if event.supersedes else None
        if queued is not None:
            self.bytes += len(event.frame) - len(queued.frame)
            queued.frame = event.frame
            return self.bytes <= self.max_bytes
        if len(self) >= self.max_frames:
            return False
        if event.supersedes:
            self._superseding[event.supersedes] = event
        if self._events is None:
            self._events = collections.deque()
        self._events.append(event)
        self.bytes += size(event)
        return self.bytes <= self.max_bytes

    def pop(self) -> Event | None:
        """The next event, its frame encoded; None when empty."""
        if not self._events:
            return None
        event = self._events.popleft()
        if not self._events:
            self._events = None
        self.bytes -= size(event)
        if event.supersedes:
            self._superseding.pop(event.supersedes, None)
        if not event.frame:
            event.frame = event.with_text(event.offset, event.text).frame
        return event

    def clear(self) -> None:
        self._events = None
        self._superseding.clear()
        self.bytes = 0
