"""Live events of one connection (typing, voice partials and finals): never stored, sent
to the conversation's other devices on every replica, throttled per source.

A source relays at most one voice partial per ``PARTIAL_EVERY_S`` (the newest; the last
one always goes out, and a final goes out at once and supersedes a held partial) and
repeats an unchanged typing state at most every ``TYPING_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chat_server.feed import FINISHED_MEMORY
from protocol.messages import InputEvent, TypingEvent

PARTIAL_EVERY_S = 0.1
TYPING_EVERY_S = 1.0

LiveEvent = InputEvent | TypingEvent

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        publish: Callable[[LiveEvent], Awaitable[None]],
        joined: Callable[[uuid.UUID], bool],
    ) -> None:
        self._publish = publish  # to the hub, excluding this connection
        self._joined = joined
        self._relayed: dict[tuple[Any, ...], float] = {}  # source → last relay
        self._held: dict[tuple[Any, ...], LiveEvent] = {}  # partials waiting for their slot
        self._timers: set[asyncio.Task[None]] = set()

    async def relay(self, event: LiveEvent) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(event, TypingEvent):
            key: tuple[Any, ...] = ("typing", event.conversation_id, event.active)
            if now - self._relayed.get(key, -1e9) < TYPING_EVERY_S:
                return
            self._relayed.pop(("typing", event.conversation_id, not event.active), None)
        elif not event.final:
            key = ("input", event.conversation_id, event.input_id)
            wait = self._relayed.get(key, -1e9) + PARTIAL_EVERY_S - now
            if wait > 0:
                if key not in self._held:  # the first held one schedules the flush
                    task = asyncio.create_task(self._later(key, wait))
                    self._timers.add(task)
                    task.add_done_callback(self._done)
                self._held[key] = event
                return
        else:  # a final transcript goes out at once and supersedes any held partial
            key = ("input", event.conversation_id, event.input_id)
            self._held.pop(key, None)
        await self._now(key, event)

    async def _later(self, key: tuple[Any, ...], wait: float) -> None:
        await asyncio.sleep(wait)
        event = self._held.pop(key, None)
        if event is not None and self._joined(event.conversation_id):
            await self._now(key, event)

    async def _now(self, key: tuple[Any, ...], event: LiveEvent) -> None:
        self._relayed[key] = asyncio.get_running_loop().time()
        if len(self._relayed) > FINISHED_MEMORY:
            self._relayed.pop(next(iter(self._relayed)))
        await self._publish(event)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._timers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("relaying a held partial failed: %r", task.exception())

    def close(self) -> None:
        for task in list(self._timers):
            task.cancel()
