"""Shared state of the replies being generated: their text so far and a lease.

Backends: ``memory.py`` (one process) and ``redis.py`` (replicas). Only the backend
modules import their driver. ``turns`` is the only writer; sessions read it to
catch a joining or repairing device up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from protocol.messages import TurnStart


@dataclass(frozen=True, slots=True)
class InflightTurn:
    turn_id: uuid.UUID
    conversation_id: uuid.UUID
    start: bytes  # the encoded turn_start frame
    text: str
    node: str  # the replica generating it


_start_decoder = msgspec.json.Decoder(TurnStart)


def started(turn: InflightTurn) -> TurnStart:
    """The turn_start of a reply the shared state holds (written by whichever replica
    runs it, so it comes back as bytes)."""
    return _start_decoder.decode(turn.start)


class Inflight(Protocol):
    """Text so far and liveness of every running generation.

    Contract:
    - ``begin`` registers a turn and takes its lease for ``lease_ms``; the owner calls
      ``renew`` well within that time. A lease not renewed expires: the turn's replica
      is presumed dead and any replica may finish the turn (see ``Turns.sweep``).
    - ``renew`` re-creates a lease that is gone (a Redis restarted empty), and returns
      the turns whose shared state is gone: the owner, which holds the truth, then
      writes it again with ``restore``.
    - ``append`` is called by the owner only, in order; ``get``/``active`` return the
      text as of some moment after every ``append`` that completed before the call.
    - Every key has a TTL (``ttl_s``): nothing outlives a crashed replica for long.
    - ``end`` forgets the turn; a later ``get`` returns None.
    """

    async def begin(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str
    ) -> None: ...

    async def append(self, turn_id: uuid.UUID, text: str) -> None: ...

    async def renew(self, turn_ids: Iterable[uuid.UUID], node: str) -> list[uuid.UUID]: ...

    async def restore(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str, text: str
    ) -> None:
        """Write a turn's whole state again (``begin`` with the text so far)."""
        ...

    async def lease_alive(self, turn_id: uuid.UUID) -> bool: ...

    async def get(self, turn_id: uuid.UUID) -> InflightTurn | None: ...

    async def active(self, conversation_id: uuid.UUID) -> list[InflightTurn]: ...

    async def end(self, turn_id: uuid.UUID, conversation_id: uuid.UUID) -> None: ...
