"""The one task that writes to a connection's socket: the frames of its bounded
``Outbox`` in order, then the close. Pushing never blocks; an outbox over its bound
calls ``on_overflow`` (the session closes the client as a slow consumer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from chat_server.hub import Event
from chat_server.outbox import Outbox
from protocol.errors import CloseCode


class Transport(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Writer:
    def __init__(
        self,
        transport: Transport,
        outbox: Outbox,
        *,
        on_overflow: Callable[[], None],
        on_sent: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.outbox = outbox
        self._transport = transport
        self._on_overflow = on_overflow
        self._on_sent = on_sent  # each frame's type, once written (metrics)
        self._wake = asyncio.Event()
        self._close: tuple[int, str] | None = None

    def push(self, event: Event) -> None:
        if self._close is not None:
            return
        if not self.outbox.push(event):
            self._on_overflow()
            return
        self._wake.set()

    def close(self, code: CloseCode, reason: str, *, flush: bool) -> bool:
        """Close after the frames already queued (``flush``) or right away (the queued
        ones dropped). False if a close was already asked for."""
        if self._close is not None:
            return False
        if not flush:
            self.outbox.clear()
        self._close = (code.value, reason.encode()[:123].decode(errors="ignore"))
        self._wake.set()
        return True

    async def run(self) -> None:
        """Write until closed; returns after closing the socket."""
        while True:
            while (event := self.outbox.pop()) is not None:
                await self._transport.send_text(event.frame)
                self._on_sent(event.kind)
            if self._close is not None:
                await self._transport.close(*self._close)
                return
            self._wake.clear()
            await self._wake.wait()
