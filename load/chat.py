"""The ``chat`` scenario: U users, each with C conversations and D devices in each.

In every conversation the first device sends a turn, all devices receive the reply
(streamed by the simulator at the given time to first token, chunk size and rate),
and the next turn goes out ``interval_ms`` after the previous one was sent (or when
its reply ends, if later). Chunks carry the simulator's emit time, so each device
measures what the server adds per chunk, whatever framing the server chose.

Reports: send → ack, send → first delta, chunk emit → receipt (every device), chunk
deliveries per second and per server CPU-second, errors by code, and messages lost:
acknowledged turns missing from the history afterwards, and replies whose text on a
device differs from the stored one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, check_end, count_lost, join, open_session, sim, stamps
from load.report import Report
from load.runner import Shard, run_clients
from protocol.messages import (
    Ack,
    Delta,
    Error,
    Join,
    Send,
    TurnEnd,
    TurnStart,
)


@dataclass(frozen=True)
class Params:
    users: int = 20
    conversations: int = 1  # per user
    devices: int = 2  # per conversation; the first one sends
    turns: int = 5  # per conversation
    interval_ms: int = 1000  # between two sends in a conversation (at the earliest)
    ttft_ms: int = 100
    tps: float = 100.0
    tokens: int = 40
    chunk: int = 1
    duration_s: float = 120.0  # hard bound for the whole run


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {"run": uuid.uuid4().hex[:10]}


class Device:
    """One device's view of a conversation: the text of each reply, by offsets."""

    def __init__(self, client: ProtocolClient, report: Report) -> None:
        self.client = client
        self.report = report
        self.texts: dict[uuid.UUID, str] = {}
        self.ended: asyncio.Queue[TurnEnd] = asyncio.Queue()
        self.acks: asyncio.Queue[Ack | Error] = asyncio.Queue()
        self.first_delta: asyncio.Queue[float | None] = asyncio.Queue()  # None: no text

    async def receive(self, turns: int) -> None:
        """Read frames until ``turns`` replies ended; check each against its turn_end."""
        seen = 0
        while seen < turns:
            frame = await self.client.recv(timeout=60)
            now = time.time()
            if isinstance(frame, TurnStart):
                self.texts[frame.turn_id] = ""
            elif isinstance(frame, Delta):
                have = self.texts.get(frame.turn_id, "")
                if not have and frame.text:
                    self.first_delta.put_nowait(time.perf_counter())
                if frame.offset != len(have):
                    self.report.counts["delta_gap_or_overlap"] += 1
                self.texts[frame.turn_id] = have[: frame.offset] + frame.text
                for emitted in stamps(frame.text):
                    self.report.add("chunk emit → receipt", (now - emitted) * 1000)
                    self.report.counts["deliveries"] += 1
            elif isinstance(frame, TurnEnd):
                seen += 1
                if not self.texts.get(frame.turn_id):
                    self.first_delta.put_nowait(None)
                check_end(self.report, frame, self.texts.get(frame.turn_id))
                self.ended.put_nowait(frame)
            elif isinstance(frame, Ack | Error):
                self.acks.put_nowait(frame)


async def conversation(ctx: Shard, user: str, url_index: int, label: str) -> None:
    p: Params = ctx.params
    report = ctx.report
    urls = ctx.urls
    devices: list[Device] = []
    try:
        first = await open_session(urls[url_index % len(urls)], user)
        joined = await join(first, Join(create={}))  # type: ignore[arg-type]
        cid = joined.conversation.id
        devices.append(Device(first, report))
        for d in range(1, p.devices):
            other = await open_session(urls[(url_index + d) % len(urls)], user)
            await join(other, Join(conversation_id=cid))
            devices.append(Device(other, report))
        readers = [asyncio.create_task(d.receive(p.turns)) for d in devices]
        sender = devices[0]
        acked: set[str] = set()
        directive = sim(ttft_ms=p.ttft_ms, tps=p.tps, tokens=p.tokens, chunk=p.chunk)
        for k in range(p.turns):
            sent = time.perf_counter()
            send_id = f"{label}-{k}"
            await sender.client.send(
                Send(id=send_id, conversation_id=cid, text=f"turn {k} {directive}")
            )
            reply = await sender.acks.get()
            if isinstance(reply, Error):
                report.errors[reply.code] += 1
                continue
            acked.add(send_id)
            report.add("send → ack", (time.perf_counter() - sent) * 1000)
            first_delta = await sender.first_delta.get()
            if first_delta is not None:
                report.add("send → first delta", (first_delta - sent) * 1000)
            await sender.ended.get()
            await asyncio.sleep(max(0.0, sent + p.interval_ms / 1000 - time.perf_counter()))
        await asyncio.gather(*readers)
        await count_lost(sender.client, report, cid, acked, limit=2 * p.turns + 10)
    finally:
        for device in devices:
            await device.client.close()


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    jobs = [
        conversation(ctx, f"load-chat-{ctx.setup['run']}-{u}", u * p.conversations + c, f"{u}.{c}")
        for u in ctx.mine(p.users)
        for c in range(p.conversations)
    ]
    await run_clients(ctx, jobs)
