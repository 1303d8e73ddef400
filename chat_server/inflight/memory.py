"""In-process in-flight state, for a single node. Leases live as long as the process."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from chat_server.inflight import InflightTurn


class MemoryInflight:
    def __init__(self) -> None:
        self._turns: dict[uuid.UUID, InflightTurn] = {}

    async def begin(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str
    ) -> None:
        self._turns[turn_id] = InflightTurn(turn_id, conversation_id, start, "", node)

    async def append(self, turn_id: uuid.UUID, text: str) -> None:
        turn = self._turns.get(turn_id)
        if turn is not None:
            self._turns[turn_id] = InflightTurn(
                turn.turn_id, turn.conversation_id, turn.start, turn.text + text, turn.node
            )

    async def renew(self, turn_ids: Iterable[uuid.UUID], node: str) -> list[uuid.UUID]:
        return []  # a single process cannot outlive itself, nor lose its memory

    async def restore(
        self, turn_id: uuid.UUID, conversation_id: uuid.UUID, start: bytes, node: str, text: str
    ) -> None:
        self._turns[turn_id] = InflightTurn(turn_id, conversation_id, start, text, node)

    async def lease_alive(self, turn_id: uuid.UUID) -> bool:
        return turn_id in self._turns

    async def get(self, turn_id: uuid.UUID) -> InflightTurn | None:
        return self._turns.get(turn_id)

    async def active(self, conversation_id: uuid.UUID) -> list[InflightTurn]:
        return [t for t in self._turns.values() if t.conversation_id == conversation_id]

    async def end(self, turn_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        self._turns.pop(turn_id, None)
