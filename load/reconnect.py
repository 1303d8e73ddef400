"""The ``reconnect`` scenario: clients drop mid-reply and come back with resume.

Each client (``chat_client``, the Python client apps use) sends a turn whose reply
streams for a while and loses its network ``drops`` times while the reply streams
(spread over the reply; the socket is aborted, no close frame). The client reconnects
by itself to the next URL (another replica when there are several) and resumes with
``after_seq`` and ``offsets``, the way a phone that changes networks would.

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

from chat_client import ChatClient
from load.client import sim
from load.runner import Shard, run_clients
from protocol.messages import Delta, Joined, MessageInfo


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
    """One device on ``chat_client``: the client reconnects and resumes by itself; this
    only takes the network away (``drop``) along each reply and checks the result."""

    def __init__(self, ctx: Shard, index: int) -> None:
        self.ctx = ctx
        self.p: Params = ctx.params
        self.user = f"load-reconnect-{ctx.setup['run']}-{index}"
        urls = ctx.urls
        start = index % len(urls)
        self.client = ChatClient(
            urls[start:] + urls[:start],
            self.user,
            backoff_base_s=self.p.reconnect_delay_ms / 1000,
        )
        self.dropped_at: float | None = None  # waiting for the joined after a drop
        self.resumed_at: float | None = None  # waiting for the first delta after it
        self.drop_at: list[int] = []
        self.cid: uuid.UUID | None = None
        # Replies that ended, by the user turn they answer: a turn_end, or the stored
        # reply that a resume brings when it ended while this device was away.
        self.ended: dict[uuid.UUID, MessageInfo] = {}
        self.ending = asyncio.Event()

    async def run(self) -> None:
        report, client = self.ctx.report, self.client
        client.on("delta", self._delta)
        client.on("joined", self._joined)
        client.on("turn_end", lambda end: self._ended(end.message, away=False))
        client.on("message", lambda m: self._ended(m.message, away=True))
        await client.connect()
        self.cid = (await client.create()).id
        acked: set[str] = set()
        directive = sim(
            ttft_ms=self.p.ttft_ms, tps=self.p.tps, tokens=self.p.tokens, chunk=self.p.chunk
        )
        try:
            for _ in range(self.p.turns):
                expected = self.p.tokens * 4  # a rough length, to spread the drops
                self.drop_at = [
                    expected * (d + 1) // (self.p.drops + 1) for d in range(self.p.drops)
                ]
                ack = await asyncio.wait_for(client.send(self.cid, f"go {directive}"), 60)
                acked.add(ack.id)
                async with asyncio.timeout(60):
                    while ack.message_id not in self.ended:
                        self.ending.clear()
                        await self.ending.wait()
                final = self.ended[ack.message_id]
                reply = client.state.conversations[self.cid].replies.get(final.id)
                if reply is None or reply.text != final.text or not reply.done:
                    report.counts["lost_reply_text"] += 1
                report.counts["replies"] += 1
            page = await client.history(self.cid, limit=50)
            stored = {m.client_id for m in page.messages if m.role == "user"}
            report.counts["acked_turns"] += len(acked)
            report.counts["lost_turns"] += len(acked - stored)
        finally:
            await client.close()

    def _ended(self, message: MessageInfo, *, away: bool) -> None:
        if message.role == "assistant" and message.reply_to is not None:
            if away and message.reply_to not in self.ended:
                self.ctx.report.counts["replies_finished_while_away"] += 1
            self.ended.setdefault(message.reply_to, message)
            self.ending.set()

    def _delta(self, delta: Delta) -> None:
        """Before the client applies a delta: what resumption must never deliver."""
        report = self.ctx.report
        assert self.cid is not None
        reply = self.client.state.conversations[self.cid].replies.get(delta.turn_id)
        have = len(reply.text) if reply is not None else 0
        if delta.offset > have:
            report.counts["gaps"] += 1
        elif delta.offset < have:
            report.counts["repeats"] += 1
        if self.resumed_at is not None:
            report.add("reconnect → next delta", (time.perf_counter() - self.resumed_at) * 1000)
            self.resumed_at = None
        if self.drop_at and have + len(delta.text) >= self.drop_at[0]:
            self.drop_at.pop(0)
            self.dropped_at = time.perf_counter()
            report.counts["reconnects"] += 1
            asyncio.get_running_loop().create_task(self.client.drop())

    def _joined(self, joined: Joined) -> None:
        if self.dropped_at is not None:
            self.ctx.report.add(
                "reconnect → joined", (time.perf_counter() - self.dropped_at) * 1000
            )
            self.resumed_at, self.dropped_at = self.dropped_at, None


async def run(ctx: Shard) -> None:
    await run_clients(ctx, [_Resumer(ctx, i).run() for i in ctx.mine(ctx.params.clients)])
