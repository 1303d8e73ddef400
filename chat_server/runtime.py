"""The shared parts of a replica that sessions and the HTTP layers use, wired once in
``create_app``; and the drain run on SIGTERM. Imports no Starlette: ``ws``, ``api`` and
``http`` reach the runtime from here without importing the session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.auth import Authenticator
from chat_server.bus import Bus
from chat_server.config import Settings
from chat_server.hub import Hub
from chat_server.inflight import Inflight
from chat_server.limits import Limiter, Unlimited
from chat_server.llm import LLMProvider
from chat_server.metrics import Metrics
from chat_server.presence import PresenceStore, PresenceTracker
from chat_server.router.embedding import Embedder
from chat_server.storage.users import UserIds
from chat_server.turns import Turns
from protocol.errors import CloseCode
from protocol.messages import GoAway

if TYPE_CHECKING:
    from chat_server.session import Session

log = logging.getLogger(__name__)


class Drain:
    """This replica's live sessions, and the graceful drain run on SIGTERM."""

    def __init__(self) -> None:
        self.sessions: set[Session] = set()
        # Accepted connections that have not said hello yet: a backlog that, past
        # PENDING_HELLOS, refuses new handshakes (503) rather than starve them all.
        self.awaiting_hello = 0
        self.draining = False
        self._empty = asyncio.Event()

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self._empty.clear()

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._empty.set()

    async def sweep_idle(self, hello_timeout_s: float, idle_s: float) -> None:
        """Close connections with no hello in time (4002) or no frame for two heartbeats
        (4001): one sweep for all, instead of a timer per connection and frame. A
        connection closes within a fifth of its limit late at most."""
        period = min(1.0, hello_timeout_s / 5, idle_s / 5)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in tuple(self.sessions):
                session.close_if_silent(now, hello_timeout_s, idle_s)

    async def run(self, turns: Turns, timeout_s: float) -> None:
        """Fail readiness, tell every client to go away, let running replies finish
        (clients that moved still get their tokens through the bus), close with 1012."""
        self.draining = True
        for session in tuple(self.sessions):
            session.reply(GoAway(reconnect_after_ms=0))
        if not await turns.drain(timeout_s):
            log.warning("drain: replies still running after %ss; they end as errors", timeout_s)
        for session in tuple(self.sessions):
            session.request_close(CloseCode.SERVICE_RESTART, "server restarting", flush=True)
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._empty.wait()


@dataclass(frozen=True, slots=True)
class Runtime:
    """The shared parts every session uses, wired once in ``create_app``."""

    settings: Settings
    db: async_sessionmaker[AsyncSession]
    hub: Hub
    turns: Turns
    auth: Authenticator
    bus: Bus
    drain: Drain
    presence: PresenceTracker
    users: UserIds
    metrics: Metrics
    limiter: Limiter

    @classmethod
    def wire(
        cls,
        settings: Settings,
        *,
        db: async_sessionmaker[AsyncSession],
        bus: Bus,
        inflight: Inflight,
        presence: PresenceStore,
        llm: LLMProvider,
        embedder: Embedder,
        limiter: Limiter | None = None,
    ) -> Runtime:
        """The one way the parts are put together (the app, and tests on memory backends)."""
        metrics = Metrics(settings.node_id, enabled=settings.metrics)
        if not settings.limits:
            limiter = Unlimited()
        hub = Hub(bus=bus, node_id=settings.node_id, metrics=metrics)
        turns = Turns(
            db=db,
            hub=hub,
            bus=bus,
            inflight=inflight,
            llm=llm,
            embedder=embedder,
            settings=settings,
            metrics=metrics,
            limiter=limiter,
        )
        drain = Drain()
        metrics.watch(metrics.bus_up, lambda: bus.healthy)
        metrics.watch(metrics.draining, lambda: drain.draining)
        return cls(
            settings=settings,
            db=db,
            hub=hub,
            turns=turns,
            auth=Authenticator(settings.jwt_secret),
            bus=bus,
            drain=drain,
            presence=PresenceTracker(presence, hub.publish),
            users=UserIds(db, default_model=settings.gemini_model),
            metrics=metrics,
            limiter=turns.limiter,
        )
