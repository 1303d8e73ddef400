"""The in-memory bus: one process, no dependencies. Several ``MemoryBus`` objects that
share one ``MemoryBroker`` behave like replicas on one Redis (used by tests)."""

from __future__ import annotations

from collections.abc import Callable

from chat_server.bus import Handler


class MemoryBroker:
    def __init__(self) -> None:
        self.channels: dict[str, dict[int, Handler]] = {}


class MemoryBus:
    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self._broker = broker or MemoryBroker()
        self._closed = False

    @property
    def healthy(self) -> bool:
        return not self._closed

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        return None  # never disconnects

    async def start(self) -> None:
        return None

    async def publish(self, channel: str, payload: bytes) -> None:
        for handler in list(self._broker.channels.get(channel, {}).values()):
            handler(payload)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        if not self._closed:
            self._broker.channels.setdefault(channel, {})[id(self)] = handler

    async def unsubscribe(self, channel: str) -> None:
        handlers = self._broker.channels.get(channel)
        if handlers is not None:
            handlers.pop(id(self), None)
            if not handlers:
                del self._broker.channels[channel]

    async def aclose(self) -> None:
        self._closed = True
        for channel in [c for c, hs in self._broker.channels.items() if id(self) in hs]:
            await self.unsubscribe(channel)
