"""The ``idle`` scenario: N idle connections, to measure server memory per connection.

Each connection says hello and joins a conversation of its own user (so it holds what
a real idle device holds), then stays quiet but for the protocol's ``ping`` at the
heartbeat the server announced. Once every load process has its connections open, the
server's RSS is compared with its RSS before the first one (``--spawn`` or ``--pid``
tells which processes to read); the connections are held for ``hold_s`` and must all
still be open at the end (``dropped`` counts those that were not).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, failure, join, open_session
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


async def _open(url: str, user: str) -> ProtocolClient:
    client = await open_session(url, user)
    await join(client, Join(create={}))  # type: ignore[arg-type]
    return client


async def _hold(client: ProtocolClient, seconds: float, heartbeat_s: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, heartbeat_s))
        await client.send(Ping())


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    mine = list(ctx.mine(p.connections))
    clients: list[ProtocolClient] = []
    report = ctx.report
    try:
        async with asyncio.timeout(p.duration_s):
            for start in range(0, len(mine), p.connect_batch):
                batch = mine[start : start + p.connect_batch]
                opened = await asyncio.gather(
                    *(
                        _open(ctx.urls[i % len(ctx.urls)], f"load-idle-{ctx.setup['run']}-{i}")
                        for i in batch
                    ),
                    return_exceptions=True,
                )
                for outcome in opened:
                    if isinstance(outcome, ProtocolClient):
                        clients.append(outcome)
                    else:
                        report.errors[failure(outcome)] += 1
            report.counts["connections"] += len(clients)
            await ctx.together()
            if ctx.shard == 0 and ctx.pids:
                await asyncio.sleep(_SETTLE_S)
                grown = server_rss(ctx.pids) - ctx.setup["rss_before"]
                report.derived["server RSS per idle connection (KiB)"] = (
                    grown / p.connections / 1024
                )
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
