"""Turns: a user turn from its frame to a stored reply, in three parts.

- ``intake``: validate, embed, route and store a turn (``Stored``: the ack and the
  generation that answers it);
- ``generation``: one reply being generated here, an object that owns its task, text,
  flusher and shared state, and ends with one final write (``final``);
- ``liveness``: leases, the sweeper, cancel over the control channel, waiting for an end.

``Turns`` wires them and keeps this replica's running generations. It never talks to a
socket; everything goes out through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.bus import Bus
from chat_server.config import Settings
from chat_server.errors import ChatError
from chat_server.hub import Hub
from chat_server.inflight import Inflight
from chat_server.limits import Limiter, MemoryLimiter
from chat_server.llm import LLMProvider
from chat_server.metrics import Metrics
from chat_server.router.embedding import Embedder
from chat_server.tools import Webhooks, parse_allowlist
from chat_server.turns.final import Finals
from chat_server.turns.generation import Context, Generation
from chat_server.turns.history import Windows
from chat_server.turns.intake import Intake, Prepared, Stored, TurnRequest
from chat_server.turns.liveness import Liveness
from protocol.errors import ErrorCode
from protocol.messages import Ack

__all__ = ["Generation", "Prepared", "Stored", "TurnRequest", "Turns"]

log = logging.getLogger(__name__)


class Turns:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        hub: Hub,
        bus: Bus,
        inflight: Inflight,
        llm: LLMProvider,
        embedder: Embedder,
        settings: Settings,
        metrics: Metrics | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.limiter = limiter or MemoryLimiter()
        self._turns_per_minute = settings.turns_per_minute
        self.inflight = inflight
        self.metrics = metrics = metrics or hub.metrics or Metrics(settings.node_id)
        self.embedder = embedder
        self._running: dict[uuid.UUID, Generation] = {}
        finals = Finals(
            db=db, hub=hub, inflight=inflight, windows=Windows(settings.history_messages)
        )
        self.webhooks = Webhooks(parse_allowlist(settings.tool_url_allowlist))
        context = Context(
            db=db,
            hub=hub,
            inflight=inflight,
            llm=llm,
            settings=settings,
            finals=finals,
            metrics=metrics,
            webhooks=self.webhooks,
        )
        self._handing: set[asyncio.Task[None]] = set()  # handoffs being started
        self.intake = Intake(
            db=db, inflight=inflight, embedder=embedder, settings=settings, context=context
        )
        self.liveness = Liveness(
            db=db,
            hub=hub,
            bus=bus,
            inflight=inflight,
            settings=settings,
            finals=finals,
            running=self._running,
        )
        self.matcher = self.intake.matcher
        self.thinking = self.intake.thinking
        self.embed_turn = self.intake.embed_turn
        self.prepare = self.intake.prepare
        self.cancel = self.liveness.cancel
        self.wait_finished = self.liveness.wait_finished
        self.run = self.liveness.run
        self.sweep = self.liveness.sweep

    async def submit(self, request: TurnRequest, acknowledge: Callable[[Ack], None]) -> Stored:
        """Store a turn, acknowledge it, then start its reply: in this order, here only.

        ``acknowledge`` runs once the turn is committed and before anything about its
        reply is published, so a device always has its ``ack`` before the reply's
        ``turn_start`` (and a duplicate is acked without starting anything)."""
        received = time.monotonic()
        self.metrics.sends_c.inc()
        per_minute = self._turns_per_minute
        wait_ms = await self.limiter.take(f"turns:{request.owner_id}", per_minute / 60, per_minute)
        if wait_ms:
            self.metrics.limit_hit("turns")
            raise ChatError(
                ErrorCode.RATE_LIMITED,
                f"more than {per_minute} turns a minute; try again in {wait_ms} ms",
                retry_after_ms=wait_ms,
            )
        stored = await self.intake.store(request)
        acknowledge(stored.ack)
        self.metrics.send_to_ack_c.observe(time.monotonic() - received)
        self.metrics.acks.labels(self.metrics.replica, str(stored.ack.duplicate)).inc()
        if stored.generation is not None:
            stored.generation.received_at = received
            self.metrics.turns_started_c.inc()
            self._running[stored.generation.turn_id] = stored.generation
            await stored.generation.begin(stored.announce, self._ended)
        return stored

    def _ended(self, generation: Generation) -> None:
        self._running.pop(generation.turn_id, None)
        if generation.tools.handoff is not None:
            task = asyncio.create_task(self._hand_over(generation))
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)

    async def _hand_over(self, previous: Generation) -> None:
        """The teammate's reply to the same user turn, on this replica."""
        try:
            generation = await self.intake.hand_over(previous)
        except Exception:
            log.exception("the handoff after turn %s failed", previous.turn_id)
            return
        generation.received_at = previous.received_at
        self.metrics.turns_started_c.inc()
        self._running[generation.turn_id] = generation
        await generation.begin(None, self._ended)

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [g.task for g in self._running.values() if g.task is not None]

    async def drain(self, timeout_s: float) -> bool:
        """Wait for running generations to finish; True if all did in time.

        A generation is registered before it is announced and gets its task right after:
        one caught in between is waited for too, or a SIGTERM arriving just after a
        device saw ``turn_start`` would shut its reply down as an error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._handing:  # a handoff between two replies: its second one is running soon
            await asyncio.wait(list(self._handing), timeout=timeout_s)
        announcing = [g.started.wait() for g in self._running.values() if g.task is None]
        if announcing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*announcing), timeout_s)
        tasks = self._tasks()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        return not pending

    async def shutdown(self) -> None:
        """Stop every generation; each stores its partial text as an error."""
        for handing in list(self._handing):
            handing.cancel()
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._handing, return_exceptions=True)
        await self.webhooks.aclose()
