"""The ``reconnect`` scenario: clients drop mid-reply and come back with resume.

Each client sends a turn whose reply streams for a while, drops its connection
``drops`` times while the reply streams (spread over the reply), reconnects to the
next URL (another replica when there are several) and resumes with ``after_seq`` and
``offsets``, the way a phone that changes networks would.

Reports: reconnect → joined, reconnect → next delta, and what resumption must never
do: a gap or a repeat in the reply text (``gaps``, ``repeats``), a reply that differs
from the stored one (``lost_reply_text``), an acknowledged turn missing afterwards
(``lost_turns``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, count_lost, join, open_session, sim
from load.runner import Shard, run_clients
from protocol.messages import Ack, Delta, Error, Join, Message, Send, TurnEnd


@dataclass(frozen=True)
class Params:
    clients: int = 50
    turns: int = 2  # per client, one after the other
    drops: int = 2  # per reply
    reconnect_delay_ms: int = 50
    ttft_ms: int = 50
    tps: float = 200.0
    tokens: int = 120
    chunk: int = 1
    duration_s: float = 120.0


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {"run": uuid.uuid4().hex[:10]}


class _Resumer:
    def __init__(self, ctx: Shard, index: int) -> None:
        self.ctx = ctx
        self.p: Params = ctx.params
        self.user = f"load-reconnect-{ctx.setup['run']}-{index}"
        self.index = index
        self.connects = 0
        self.client: ProtocolClient | None = None
        self.seq = 0  # highest seq held complete
        self.resumed_at: float | None = None

    def _url(self) -> str:
        url = self.ctx.urls[(self.index + self.connects) % len(self.ctx.urls)]
        self.connects += 1
        return url

    async def run(self) -> None:
        report = self.ctx.report
        self.client = await open_session(self._url(), self.user)
        cid = (await join(self.client, Join(create={}))).conversation.id  # type: ignore[arg-type]
        acked: set[str] = set()
        directive = sim(
            ttft_ms=self.p.ttft_ms, tps=self.p.tps, tokens=self.p.tokens, chunk=self.p.chunk
        )
        try:
            for k in range(self.p.turns):
                await self.client.send(
                    Send(id=f"t{k}", conversation_id=cid, text=f"go {directive}")
                )
                if await self._turn(cid):
                    acked.add(f"t{k}")
            await count_lost(self.client, report, cid, acked, limit=50)
        finally:
            await self.client.close()

    async def _turn(self, cid: uuid.UUID) -> bool:
        """One reply, dropping and resuming along the way; True if the send was acked."""
        assert self.client is not None
        report = self.ctx.report
        acked = False
        turn_id: uuid.UUID | None = None
        text = ""
        expected_chars = self.p.tokens * 4  # a rough length, to spread the drops
        drop_at = [expected_chars * (d + 1) // (self.p.drops + 1) for d in range(self.p.drops)]
        while True:
            frame = await self.client.recv(timeout=30)
            if isinstance(frame, Ack):
                acked, self.seq = True, max(self.seq, frame.seq)
            elif isinstance(frame, Error):
                report.errors[frame.code] += 1
                return acked
            elif isinstance(frame, Delta) and turn_id in (None, frame.turn_id):
                turn_id = frame.turn_id
                if self.resumed_at is not None:
                    waited = time.perf_counter() - self.resumed_at
                    report.add("reconnect → next delta", waited * 1000)
                    self.resumed_at = None
                if frame.offset > len(text):
                    report.counts["gaps"] += 1
                elif frame.offset < len(text):
                    report.counts["repeats"] += 1
                text = text[: frame.offset] + frame.text
                if drop_at and len(text) >= drop_at[0]:
                    drop_at.pop(0)
                    await self._resume(cid, turn_id, len(text))
            elif isinstance(frame, TurnEnd):
                self.seq = max(self.seq, frame.seq)
                if frame.message.text != text:
                    report.counts["lost_reply_text"] += 1
                report.counts["replies"] += 1
                return acked
            elif isinstance(frame, Message) and frame.message.role == "assistant":
                # The reply ended while this device was away: it comes back stored.
                self.seq = max(self.seq, frame.seq)
                if not frame.message.text.startswith(text):
                    report.counts["lost_reply_text"] += 1
                report.counts["replies"] += 1
                report.counts["replies_finished_while_away"] += 1
                return acked

    async def _resume(self, cid: uuid.UUID, turn_id: uuid.UUID, held: int) -> None:
        assert self.client is not None
        self.client.ws.transport.abort()  # the network is gone: no close frame
        await asyncio.sleep(self.p.reconnect_delay_ms / 1000)
        started = time.perf_counter()
        self.client = await open_session(self._url(), self.user)
        await join(
            self.client, Join(conversation_id=cid, after_seq=self.seq, offsets={turn_id: held})
        )
        self.ctx.report.add("reconnect → joined", (time.perf_counter() - started) * 1000)
        self.ctx.report.counts["reconnects"] += 1
        self.resumed_at = started


async def run(ctx: Shard) -> None:
    await run_clients(ctx, [_Resumer(ctx, i).run() for i in ctx.mine(ctx.params.clients)])
