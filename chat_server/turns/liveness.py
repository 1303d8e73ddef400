"""Liveness of replies across replicas: leases, the sweeper, cancel over the bus's
control channel, and waiting for a reply's end.

Every replica renews the leases of its own generations and sweeps for replies whose
lease expired (their replica died), ending them with ``finish_reason:error``; the final
write is conditional, so only one sweeper wins. A cancel reaches the replica running
the turn through the control channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.bus import Bus
from chat_server.config import Settings
from chat_server.errors import ChatError
from chat_server.hub import Event, Hub
from chat_server.inflight import Inflight, started
from chat_server.storage import queries
from chat_server.turns.final import Finals
from chat_server.turns.generation import Generation
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, FinishReason, Usage

log = logging.getLogger("chat_server.turns")

CONTROL_CHANNEL = "ctl:turns"


class CancelRequest(msgspec.Struct):
    turn_id: uuid.UUID
    heard_chars: int | None = None


_control_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(CancelRequest)


class Liveness:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        hub: Hub,
        bus: Bus,
        inflight: Inflight,
        settings: Settings,
        finals: Finals,
        running: Mapping[uuid.UUID, Generation],
    ) -> None:
        self._db = db
        self._hub = hub
        self._bus = bus
        self._inflight = inflight
        self._settings = settings
        self._finals = finals
        self._running = running  # this replica's generations, by turn id
        # Replies the sweeper found without a lease, and when it first did.
        self._suspects: dict[uuid.UUID, float] = {}

    # ------------------------------------------------------------------ cancel

    async def cancel(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID | None, heard_chars: int | None
    ) -> uuid.UUID:
        """Stop a streaming reply (the newest if no ``turn_id``), on whichever replica
        runs it; that replica stores what is kept and sends ``turn_end``."""
        candidates = [
            (started(t).seq, t.turn_id)
            for t in await self._inflight.active(conversation_id)
            if turn_id is None or t.turn_id == turn_id
        ]
        if not candidates:
            raise ChatError(ErrorCode.NO_ACTIVE_TURN, "no reply is streaming to cancel")
        target = max(candidates)[1]
        local = self._running.get(target)
        if local is not None:
            local.cancel(heard_chars)
        else:
            request = CancelRequest(turn_id=target, heard_chars=heard_chars)
            await self._bus.publish(CONTROL_CHANNEL, _control_encoder.encode(request))
        return target

    def _on_control(self, payload: bytes) -> None:
        try:
            request = _control_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed control message")
            return
        local = self._running.get(request.turn_id)
        if local is not None:
            local.cancel(request.heard_chars)

    async def wait_finished(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID, timeout_s: float
    ) -> bool:
        """Wait until a reply's final text is stored (it may run on another replica):
        its task here, else its turn_end event through the hub, not by polling Redis."""
        local = self._running.get(turn_id)
        if local is not None and local.task is not None:
            done, _ = await asyncio.wait([local.task], timeout=timeout_s)
            return bool(done)
        waiter = _TurnEndWaiter(turn_id)
        await self._hub.join(conversation_id, waiter)
        try:
            # Listening first, then looking: a turn_end published in between is not missed.
            if await self._inflight.get(turn_id) is None:
                return True
            async with asyncio.timeout(timeout_s):
                await waiter.ended.wait()
            return True
        except TimeoutError:
            return False
        finally:
            await self._hub.leave(conversation_id, waiter)

    # ------------------------------------------------------------------ leases

    async def run(self) -> None:
        """Background duty of every replica: renew this replica's leases (every third
        of ``lease_ms``) and sweep for replies whose replica died (every half)."""
        await self._bus.subscribe(CONTROL_CHANNEL, self._on_control)
        tick = self._settings.lease_ms / 3000
        ticks = 0
        while True:
            await asyncio.sleep(tick)
            ticks += 1
            try:
                if self._running:
                    await self._renew()
                if ticks % 2 == 0:
                    await self.sweep()
            except Exception:  # Redis or Postgres away: try again next tick
                log.warning("lease renewal or sweep failed", exc_info=True)

    async def _renew(self) -> None:
        """Renew this replica's leases; write again the shared state Redis lost."""
        lost = await self._inflight.renew(list(self._running), self._settings.node_id)
        for turn_id in lost:
            local = self._running.get(turn_id)
            if local is not None:
                local.shared_lost()

    async def sweep(self) -> int:
        """End replies left streaming by a replica that stopped renewing its lease.

        A lease seen missing is only a suspicion: Redis may have restarted empty, and
        the owner re-creates its leases within a third of ``lease_ms``. A reply is ended
        only when its lease is still missing ``lease_ms`` after it was first seen so."""
        async with self._db.begin() as s:
            rows = await queries.streaming_replies(s, older_than_ms=self._settings.lease_ms)
        now = time.monotonic()
        streaming = {row.id for row in rows}
        for gone in [t for t in self._suspects if t not in streaming]:
            del self._suspects[gone]
        ended = 0
        for row in rows:
            if row.id in self._running or await self._inflight.lease_alive(row.id):
                self._suspects.pop(row.id, None)
                continue
            first_seen = self._suspects.setdefault(row.id, now)
            if now - first_seen < self._settings.lease_ms / 1000:
                continue
            del self._suspects[row.id]
            state = await self._inflight.get(row.id)
            error = ErrorInfo(
                code=ErrorCode.LLM_UNAVAILABLE,
                message="the replica generating this reply stopped",
                retryable=True,
            )
            if await self._finals.store_end(
                row.conversation_id,
                row.id,
                state.text if state else row.text,
                FinishReason.ERROR,
                Usage(),
                error,
                swept=True,
            ):
                ended += 1
                log.warning("ended reply %s of a lost replica", row.id)
        return ended


@dataclass(eq=False)
class _TurnEndWaiter:
    """A hub subscriber that only notices one turn's end."""

    turn_id: uuid.UUID
    id: str = field(default_factory=lambda: f"turn-end-{uuid.uuid4().hex}")
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: Event) -> None:
        if event.kind in ("turn_end", "message") and event.turn_id == self.turn_id:
            self.ended.set()

    def resync(self, conversation_id: uuid.UUID) -> None:
        return None  # the caller's timeout bounds the wait; the session repairs itself
