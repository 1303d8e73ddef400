"""Who is in a conversation, across replicas: one entry per joined device, with a TTL.

Backends: ``memory.py`` (one process) and ``redis.py``. A replica refreshes the entries
of its own devices every ``PRESENCE_REFRESH_S``; entries of a replica that died expire
after ``PRESENCE_TTL_S`` and drop out of the next ``members`` call. ``PresenceTracker``
sits in front of a store and announces changes, coalesced per conversation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from protocol.messages import Presence

log = logging.getLogger(__name__)

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


PRESENCE_WINDOW_S = 0.25  # a conversation's presence is announced at most this often


class PresenceTracker:
    """Keeps the store up to date as devices join and leave, and announces who is in a
    conversation after each change, at most once per ``window_s`` per conversation.

    The first change is announced at once; changes during the window after it are
    announced together when the window ends. A storm of N devices joining one
    conversation costs a few ``members`` reads and presence frames, not N reads and
    N frames to a growing crowd (N²/2 deliveries). Presence is best effort: a failed
    announcement is logged, and the TTL in the store cleans up after a lost ``leave``.
    """

    def __init__(
        self,
        store: PresenceStore,
        publish: Callable[[Presence], Awaitable[None]],
        window_s: float = PRESENCE_WINDOW_S,
    ) -> None:
        self.store = store
        self._publish = publish
        self._window = window_s
        self._announcing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._changed: set[uuid.UUID] = set()
        self._closed = False

    async def enter(self, conversation_id: uuid.UUID, device: Device) -> None:
        await self.store.enter(conversation_id, device)
        self._announce(conversation_id)

    async def leave(self, conversation_id: uuid.UUID, device: Device) -> None:
        await self.store.leave(conversation_id, device)
        self._announce(conversation_id)

    def _announce(self, conversation_id: uuid.UUID) -> None:
        if self._closed:  # shutting down: the store's TTL tells the other replicas
            return
        if conversation_id in self._announcing:
            self._changed.add(conversation_id)  # the running announcer picks it up
        else:
            self._announcing[conversation_id] = asyncio.create_task(
                self._announcer(conversation_id), name=f"presence {conversation_id}"
            )

    async def _announcer(self, conversation_id: uuid.UUID) -> None:
        try:
            while True:
                self._changed.discard(conversation_id)
                try:
                    devices = await self.store.members(conversation_id)
                    await self._publish(
                        Presence(
                            conversation_id=conversation_id,
                            users=sorted({d.user_id for d in devices}),
                            devices=len(devices),
                        )
                    )
                except Exception:
                    log.warning("presence announcement failed", exc_info=True)
                await asyncio.sleep(self._window)
                if conversation_id not in self._changed:
                    return
        finally:
            del self._announcing[conversation_id]

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._announcing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
