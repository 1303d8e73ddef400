"""Who is in a conversation, across replicas: one entry per joined device, with a TTL.

Backends: ``memory.py`` (one process) and ``redis.py``. A replica refreshes the entries
of its own devices every ``PRESENCE_REFRESH_S``; entries of a replica that died expire
after ``PRESENCE_TTL_S`` and drop out of the next ``members`` call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

PRESENCE_TTL_S = 30.0
PRESENCE_REFRESH_S = 10.0


@dataclass(frozen=True, slots=True)
class Device:
    session_id: str
    user_id: str


class PresenceStore(Protocol):
    """Contract: ``enter`` and ``refresh`` make an entry live for ``PRESENCE_TTL_S``;
    ``leave`` removes it at once; ``members`` lists the live entries only."""

    async def enter(self, conversation_id: uuid.UUID, device: Device) -> None: ...

    async def leave(self, conversation_id: uuid.UUID, device: Device) -> None: ...

    async def refresh(self, entries: Iterable[tuple[uuid.UUID, Device]]) -> None: ...

    async def members(self, conversation_id: uuid.UUID) -> list[Device]: ...
