"""The ``storm`` scenario: every device drops at once and comes back, as after a
deploy or a network blip.

``devices`` returning devices (two per user, each user with a conversation) connect,
say hello and join. Then, at the same moment in every load process, every socket is
aborted (no close frame), and each device comes back after a random delay within
``spread_s``: connect, hello with the same user, join with ``after_seq`` (a resume).
A device whose try fails (HTTP 503, a 4002, a timeout) retries with jittered back-off,
as the clients do, until ``duration_s``.

Reports: drop → joined per device (its p99 is the time until 99 % are back), the
devices that never came back (``never_back``, must be 0), the closes with 4002, the
refused tries by cause, and the server's CPU per device back (``server_ms_per_back``,
the servers' CPU from the drop until the last device joined, divided by the devices).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, failure, join, open_session
from load.report import Report
from load.runner import Shard, _cpu
from protocol.messages import ConversationCreate, Join


@dataclass(frozen=True)
class Params:
    devices: int = 1000
    spread_s: float = 3.0  # devices come back within this long after the drop
    connect_batch: int = 100  # devices connecting at once before the drop
    duration_s: float = 300.0


# Every simulated device connects from 127.0.0.1: the per-IP handshake limit (meant for
# one abusive address) would refuse the storm of a whole user base.
SERVER_ENV = {"HANDSHAKES_PER_IP_PER_S": "1000000"}


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {"run": uuid.uuid4().hex[:10]}


class _Device:
    def __init__(self, url: str, user: str) -> None:
        self.url = url
        self.user = user
        self.client: ProtocolClient | None = None
        self.cid: uuid.UUID | None = None
        self.last_seq = 0

    async def first(self, cid: uuid.UUID | None) -> uuid.UUID:
        self.client = await open_session(self.url, self.user, open_timeout=30)
        how = Join(conversation_id=cid) if cid else Join(create=ConversationCreate(title="s"))
        joined = await join(self.client, how)
        self.cid, self.last_seq = joined.conversation.id, joined.last_seq
        return self.cid

    def drop(self) -> None:
        assert self.client is not None
        transport = self.client.ws.transport
        transport.abort()  # the network went away: no close frame

    async def back(self, ctx: Shard, dropped: float, deadline: float) -> None:
        await asyncio.sleep(random.uniform(0, ctx.params.spread_s))
        delay = 0.5
        while time.time() < deadline:
            try:
                # Like chat_client: 10 s for the WebSocket handshake, then as long as it
                # takes for the welcome and joined (a client that gave up on a slow server
                # and retried would only add to the storm).
                client = await open_session(self.url, self.user, timeout=120, open_timeout=10)
                resume = Join(conversation_id=self.cid, after_seq=self.last_seq)
                try:
                    joined = await join(client, resume, timeout=120)
                except BaseException:
                    await client.close()
                    raise
            except Exception as exc:
                code = failure(exc)
                ctx.report.counts[f"refused:{code}"] += 1
                if code == "close:4002":
                    ctx.report.counts["closed_4002"] += 1
                await asyncio.sleep(random.uniform(0.5, 1.0) * delay)
                delay = min(delay * 2, 8.0)
                continue
            if not joined.recovered:
                ctx.report.counts["not_resumed"] += 1
            ctx.report.add("drop → joined", (time.time() - dropped) * 1000)
            ctx.report.counts["back"] += 1
            self.client = client
            return
        ctx.report.counts["never_back"] += 1


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    devices: list[_Device] = []
    mine = list(ctx.mine(p.devices))
    for start in range(0, len(mine), p.connect_batch):
        batch = mine[start : start + p.connect_batch]
        pairs: dict[int, list[_Device]] = {}
        for n in batch:  # devices 2k and 2k+1 are one user's phone and laptop
            user = f"storm-{ctx.setup['run']}-{n // 2}"
            pairs.setdefault(n // 2, []).append(_Device(ctx.urls[n % len(ctx.urls)], user))

        async def connect(pair: list[_Device]) -> None:
            cid = await pair[0].first(None)
            for other in pair[1:]:
                await other.first(cid)

        await asyncio.gather(*(connect(pair) for pair in pairs.values()))
        devices += [device for pair in pairs.values() for device in pair]
    ctx.report.counts["joined_before"] = len(devices)
    await ctx.together()
    await asyncio.sleep(1.0)  # the other processes' last joins settle
    cpu_before = _cpu(ctx.pids) if ctx.shard == 0 else 0.0
    dropped = time.time()
    for device in devices:
        device.drop()
    back_by = dropped + p.duration_s / 3
    await asyncio.gather(*(d.back(ctx, dropped, back_by) for d in devices))
    ctx.report.measured(dropped, time.time())
    await ctx.together()
    if ctx.shard == 0:
        ctx.report.counts["server_cpu_ms"] = int((_cpu(ctx.pids) - cpu_before) * 1000)
    for device in devices:
        if device.client is not None:
            await device.client.close()


def finish(report: Report) -> None:
    back = report.counts.get("back", 0)
    if back:
        report.derived["server_ms_per_back"] = report.counts.get("server_cpu_ms", 0) / back
