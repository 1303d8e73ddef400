"""What writes to a connection's socket: the frames of its bounded ``Outbox`` in order,
then the close. Pushing never blocks; an outbox over its bound calls ``on_overflow``
(the session closes the client as a slow consumer).

One task writes, and only while there is something to write: an idle connection holds
no task, no event and no waiter (a standing writer task and its ``asyncio.Event`` were
~2 KiB of each idle connection's memory). Frames still go out one at a time, in order,
from that one task."""

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
        self._close: tuple[int, str] | None = None
        self._task: asyncio.Task[None] | None = None  # writing now; None when idle
        self._done: asyncio.Future[None] | None = None  # made for whoever waits for the end
        self.closed = False  # the socket is closed (or failed): nothing more is written

    def push(self, event: Event) -> None:
        if self._close is not None:
            return
        if not self.outbox.push(event):
            self._on_overflow()
            return
        self._kick()

    def close(self, code: CloseCode, reason: str, *, flush: bool) -> bool:
        """Close after the frames already queued (``flush``) or right away (the queued
        ones dropped). False if a close was already asked for."""
        if self._close is not None:
            return False
        if not flush:
            self.outbox.clear()
        self._close = (code.value, reason.encode()[:123].decode(errors="ignore"))
        self._kick()
        return True

    async def run(self) -> None:
        """Write until closed; returns after closing the socket."""
        self._kick()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self.closed:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    def abort(self) -> None:
        """Stop writing now (the connection is gone)."""
        if self._task is not None:
            self._task.cancel()
        self._finished()

    def _kick(self) -> None:
        if not self.closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while (event := self.outbox.pop()) is not None:
                await self._transport.send_text(event.frame)
                self._on_sent(event.kind)
            if self._close is not None:
                await self._transport.close(*self._close)
                self._finished()
        except Exception:  # the socket is gone: the receive side sees the disconnect
            self._finished()
        finally:
            self._task = None

    def _finished(self) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
