"""Voice turns of one connection: barge-in (a user speaking over a reply stops it,
keeping what was heard) and early routing (the route and history worked out from
partial transcripts while the user still speaks). The session hands it each ``input``
frame's facts and its options; the turns do the work.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from chat_server.errors import ChatError
from chat_server.feed import FINISHED_MEMORY
from chat_server.turns import Prepared, Turns
from protocol.messages import Input, InterruptOn, SessionOptions

PREPARED_FRESH_S = 5.0  # a route/history prepared from partials is reused this long
INTERRUPT_WAIT_S = 2.0  # how long a final input waits for the reply it interrupted to store


class Voice:
    def __init__(self, turns: Turns) -> None:
        self._turns = turns
        self._prepared: dict[uuid.UUID, tuple[float, asyncio.Task[Prepared]]] = {}
        # Input ids that already interrupted a reply: an ordered set, oldest dropped first.
        self._interrupted_by: dict[str, None] = {}

    async def on_input(
        self, message: Input, options: SessionOptions, owner_id: uuid.UUID
    ) -> Prepared | None:
        """An ``input`` frame's turn work: barge-in, then for a final transcript what was
        prepared for it (None if nothing, or if a reply was interrupted: its stored text
        changed the history); for a partial, early routing if the options ask for it."""
        interrupted = await self.interrupt(message, options.interrupt_on)
        if message.final:
            prepared = await self.take_prepared(message.conversation_id)
            return None if interrupted else prepared
        if options.early_routing:
            self.prepare(owner_id, message.conversation_id, message.text)
        return None

    async def interrupt(self, message: Input, when: InterruptOn) -> bool:
        """Barge-in: stop the reply streaming in the conversation, keeping
        ``heard_chars``. Returns whether a reply was interrupted (and its text stored)."""
        if when is InterruptOn.NEVER or message.input_id in self._interrupted_by:
            return False
        if when is InterruptOn.FINAL and not message.final:
            return False
        self._interrupted_by[message.input_id] = None
        if len(self._interrupted_by) > FINISHED_MEMORY:
            del self._interrupted_by[next(iter(self._interrupted_by))]
        try:
            turn_id = await self._turns.cancel(message.conversation_id, None, message.heard_chars)
        except ChatError:  # nothing streaming: nothing to interrupt
            return False
        return await self._turns.wait_finished(message.conversation_id, turn_id, INTERRUPT_WAIT_S)

    def prepare(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, text: str) -> None:
        """Early routing: work out the route and history while the user still speaks."""
        current = self._prepared.get(conversation_id)
        if current is not None and time.monotonic() - current[0] < PREPARED_FRESH_S:
            return
        task = asyncio.create_task(
            self._turns.prepare(owner_id=owner_id, conversation_id=conversation_id, text=text)
        )
        task.add_done_callback(_consume_exception)
        self._prepared[conversation_id] = (time.monotonic(), task)

    async def take_prepared(self, conversation_id: uuid.UUID) -> Prepared | None:
        """What was prepared for the conversation, if fresh; None to route from scratch."""
        entry = self._prepared.pop(conversation_id, None)
        if entry is None or time.monotonic() - entry[0] > PREPARED_FRESH_S:
            return None
        try:
            return await entry[1]
        except Exception:  # preparing is an optimisation; the turn routes itself
            return None

    def close(self) -> None:
        for _, prepared in self._prepared.values():
            prepared.cancel()


def _consume_exception(task: asyncio.Task[Prepared]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here so an unused failure is not logged as lost
