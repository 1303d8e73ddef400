"""The ``idle`` scenario: N idle connections, to measure server memory per connection.

Each connection says hello and joins a conversation of its own user (so it holds what
a real idle device holds), then stays quiet but for the protocol's ``ping`` at the
heartbeat the server announced. It gets there in three stages, every load process
together: open the WebSocket, say hello, join. The server's RSS is read before the
first stage and after each (``--spawn`` or ``--pid`` tells which processes to read), so
the report says what each part of a connection costs: uvicorn + Starlette + the
websockets protocol, this server's session, a joined conversation. The connections are
held for ``hold_s`` and must all still be open at the end (``dropped`` counts those that
were not).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, failure, hello, join
from load.runner import Shard, server_rss
from protocol.messages import Join, Ping

_SETTLE_S = 1.0  # lets the server finish allocating before RSS is read


@dataclass(frozen=True)
class Params:
    connections: int = 1000
    hold_s: float = 5.0
    connect_batch: int = 100  # opened at once, per load process
    duration_s: float = 120.0


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    await asyncio.sleep(_SETTLE_S)
    return {"run": uuid.uuid4().hex[:10], "rss_before": server_rss(pids)}


STAGES = (
    ("open WebSocket, no hello yet (uvicorn, Starlette, websockets, its tasks)", "connected"),
    ("+ session (after hello)", "hello"),
    ("+ joined conversation of its own", "joined"),
)
TOTAL = "server RSS per idle connection (KiB)"
# Every socket is opened before any hello (to measure each stage): no hello backlog cap.
SERVER_ENV = {"PENDING_HELLOS": "0"}


async def _or_close(client: ProtocolClient, step: Awaitable[object]) -> ProtocolClient:
    """Run one stage's step on ``client``; a client whose step failed is closed."""
    try:
        await step
    except BaseException:
        await client.close()
        raise
    return client


async def _hold(client: ProtocolClient, seconds: float, heartbeat_s: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, heartbeat_s))
        await client.send(Ping())


async def _stage(ctx: Shard, steps: list[Awaitable[ProtocolClient]]) -> list[ProtocolClient]:
    """Run one step per client, a batch at a time; the clients that made it."""
    p: Params = ctx.params
    kept: list[ProtocolClient] = []
    for start in range(0, len(steps), p.connect_batch):
        done = await asyncio.gather(*steps[start : start + p.connect_batch], return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, ProtocolClient):
                kept.append(outcome)
            else:
                ctx.report.errors[failure(outcome)] += 1
    return kept


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    mine = list(ctx.mine(p.connections))
    report = ctx.report
    clients: list[ProtocolClient] = []
    rss = [ctx.setup["rss_before"]]
    try:
        async with asyncio.timeout(p.duration_s):
            # Each stage adds one part of what an idle device holds on the server; the
            # RSS is read between stages, while every process waits (hello must come
            # within the server's hello timeout, 10 s by default).
            for _, stage in STAGES:
                steps: list[Awaitable[ProtocolClient]]
                if stage == "connected":
                    steps = [ProtocolClient.connect(ctx.urls[i % len(ctx.urls)]) for i in mine]
                elif stage == "hello":
                    user = f"load-idle-{ctx.setup['run']}-{ctx.shard}"
                    steps = [_or_close(c, hello(c, f"{user}-{k}")) for k, c in enumerate(clients)]
                else:
                    create = Join(create={})  # type: ignore[arg-type]
                    steps = [_or_close(c, join(c, create)) for c in clients]
                clients = await _stage(ctx, steps)
                await ctx.together()
                if ctx.shard == 0 and ctx.pids:
                    await asyncio.sleep(_SETTLE_S)
                    rss.append(server_rss(ctx.pids))
                await ctx.together()
            report.counts["connections"] += len(clients)
            if len(rss) == len(STAGES) + 1:
                for (name, _), before, after in zip(STAGES, rss, rss[1:], strict=False):
                    report.derived[f"server RSS per connection: {name} (KiB)"] = (
                        (after - before) / p.connections / 1024
                    )
                report.derived[TOTAL] = (rss[-1] - rss[0]) / p.connections / 1024
            held = await asyncio.gather(
                *(_hold(c, p.hold_s, heartbeat_s=10.0) for c in clients), return_exceptions=True
            )
            for result in held:
                if isinstance(result, BaseException):
                    report.counts["dropped"] += 1
                    report.errors[failure(result)] += 1
    except TimeoutError:
        report.errors["load:deadline"] += 1
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
