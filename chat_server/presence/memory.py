"""Presence in one process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from chat_server.presence import PRESENCE_TTL_S, Device


class MemoryPresence:
    def __init__(self, ttl_s: float = PRESENCE_TTL_S) -> None:
        self._ttl = ttl_s
        self._entries: dict[uuid.UUID, dict[Device, float]] = {}

    async def enter(self, conversation_id: uuid.UUID, device: Device) -> None:
        self._entries.setdefault(conversation_id, {})[device] = time.monotonic() + self._ttl

    async def leave(self, conversation_id: uuid.UUID, device: Device) -> None:
        devices = self._entries.get(conversation_id)
        if devices is not None:
            devices.pop(device, None)
            if not devices:
                del self._entries[conversation_id]

    async def refresh(self, entries: Iterable[tuple[uuid.UUID, Device]]) -> None:
        for conversation_id, device in entries:
            await self.enter(conversation_id, device)

    async def members(self, conversation_id: uuid.UUID) -> list[Device]:
        now = time.monotonic()
        devices = self._entries.get(conversation_id, {})
        for device in [d for d, expiry in devices.items() if expiry <= now]:
            del devices[device]
        return sorted(devices, key=lambda d: (d.user_id, d.session_id))
