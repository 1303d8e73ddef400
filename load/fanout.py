"""The ``fanout`` scenario: one conversation with many devices across replicas.

Subscribers are spread over the URLs (replicas) round-robin; once every load process
has its subscribers joined, a publisher device on the first URL sends ``turns`` turns,
one after the other, each streamed by the simulator with stamped chunks. The replica
the publisher is on generates the replies; the others get them through Redis, so the
two "chunk emit → receipt" rows differ by the cross-replica fan-out delay.

Reports: chunk deliveries per second (of the publishing phase) and per server
CPU-second, chunk emit → receipt on the generating replica and on the others, the
fan-out delay across replicas (p50 of the second minus p50 of the first), and lost
text: a subscriber whose reply differs from the stored one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, failure, join, open_session, sim, stamps
from load.report import Report, percentile
from load.runner import Shard
from protocol.messages import Ack, Delta, Error, Join, Send, TurnEnd

LOCAL, REMOTE = "chunk emit → receipt (generating replica)", "chunk emit → receipt (other replicas)"
JOINING = "connect → joined"
# Every subscriber is a device of one user: far more than CONNECTIONS_PER_USER allows.
# One user's many devices, opened in batches before they say hello: room for both.
SERVER_ENV = {"CONNECTIONS_PER_USER": "100000", "PENDING_HELLOS": "0"}


@dataclass(frozen=True)
class Params:
    subscribers: int = 200
    turns: int = 3
    ttft_ms: int = 0
    tps: float = 1000.0
    tokens: int = 200
    chunk: int = 1
    connect_batch: int = 50  # connections opened at once, per load process
    duration_s: float = 120.0


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    user = f"load-fanout-{uuid.uuid4().hex[:10]}"
    client = await open_session(urls[0], user)
    try:
        joined = await join(client, Join(create={}))  # type: ignore[arg-type]
    finally:
        await client.close()
    return {"user": user, "cid": str(joined.conversation.id)}


async def _subscribe(ctx: Shard, url: str, user: str, cid: uuid.UUID) -> ProtocolClient:
    started = time.perf_counter()
    client = await open_session(url, user, max_queue=None)
    await join(client, Join(conversation_id=cid))
    ctx.report.add(JOINING, (time.perf_counter() - started) * 1000)
    return client


async def _receive(ctx: Shard, client: ProtocolClient, metric: str) -> None:
    p: Params = ctx.params
    texts: dict[uuid.UUID, str] = {}
    ended = 0
    while ended < p.turns:
        frame = await client.recv(timeout=p.duration_s)
        if isinstance(frame, Delta):
            now = time.time()
            texts[frame.turn_id] = texts.get(frame.turn_id, "")[: frame.offset] + frame.text
            for emitted in stamps(frame.text):
                ctx.report.add(metric, (now - emitted) * 1000)
                ctx.report.counts["deliveries"] += 1
        elif isinstance(frame, TurnEnd):
            ended += 1
            if texts.get(frame.turn_id) != frame.message.text:
                ctx.report.counts["lost_reply_text"] += 1


async def _publish(ctx: Shard, user: str, cid: uuid.UUID) -> None:
    p: Params = ctx.params
    publisher = await open_session(ctx.urls[0], user)
    try:
        await join(publisher, Join(conversation_id=cid))
        directive = sim(ttft_ms=p.ttft_ms, tps=p.tps, tokens=p.tokens, chunk=p.chunk)
        for k in range(p.turns):
            sent = time.perf_counter()
            await publisher.send(Send(id=f"t{k}", conversation_id=cid, text=f"go {directive}"))
            while not isinstance(frame := await publisher.recv(timeout=p.duration_s), TurnEnd):
                if isinstance(frame, Ack):
                    ctx.report.add("send → ack", (time.perf_counter() - sent) * 1000)
                elif isinstance(frame, Error):
                    ctx.report.errors[frame.code] += 1
    finally:
        await publisher.close()


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    user, cid = ctx.setup["user"], uuid.UUID(ctx.setup["cid"])
    mine = list(ctx.mine(p.subscribers))
    clients: list[tuple[ProtocolClient, str]] = []
    try:
        async with asyncio.timeout(p.duration_s):
            for start in range(0, len(mine), p.connect_batch):
                batch = mine[start : start + p.connect_batch]
                opened = await asyncio.gather(
                    *(_subscribe(ctx, ctx.urls[i % len(ctx.urls)], user, cid) for i in batch)
                )
                metrics = [LOCAL if i % len(ctx.urls) == 0 else REMOTE for i in batch]
                clients += zip(opened, metrics, strict=True)
            await ctx.together()
            started = time.time()
            jobs = [_receive(ctx, client, metric) for client, metric in clients]
            if ctx.shard == 0:
                jobs.append(_publish(ctx, user, cid))
            results = await asyncio.gather(*jobs, return_exceptions=True)
            ctx.report.measured(started, time.time())
    except TimeoutError:
        ctx.report.errors["load:deadline"] += 1
        return
    finally:
        await asyncio.gather(*(c.close() for c, _ in clients), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            ctx.report.errors[failure(result)] += 1


def finish(report: Report) -> None:
    """After the processes' reports are merged: the delay Redis and the other replica add."""
    local, remote = report.samples.get(LOCAL), report.samples.get(REMOTE)
    if local and remote:
        for p in (50, 95):
            added = percentile(remote, p) - percentile(local, p)
            report.derived[f"cross-replica fan-out delay p{p} (ms)"] = added
