"""The ``abuse`` scenario: ordinary users chat while one abusive user floods.

Rounds of two phases, run back to back on the same servers so the two conditions
share the machine's state: first ordinary users alone, then the same ordinary workload
(fresh users, so their own turn budgets start full) while one abuser

- opens ``abuse_connections`` sessions (more than ``CONNECTIONS_PER_USER``: the rest are
  closed 4005),
- sends turns on all of them at ``abuse_sends_per_s`` (far over ``TURNS_PER_MINUTE`` and
  ``CONCURRENT_REPLIES``), each asking for a reply,
- and floods pings on one connection until it is closed 4004, then comes back.

Ordinary users are the ``chat`` scenario's conversations (one turn at a time, a reply
streamed to two devices on different replicas). The default ordinary load (10 turns a
second) leaves this 2-core machine room: at 60 a second (30 users every 500 ms) the
servers were saturated without any abuser (send → ack p50 ~0.5 s), and the comparison
measured CPU saturation, not the limits. Reported: their send → first delta
with and without the abuser (p99 ratio; goal ≤ 1.2), what the abuser got (acks,
``rate_limited``, closes), and whether any turn the server did not accept reached the
model: the replicas' ``chat_model_requests_total`` must grow by exactly the turns they
acknowledged (ordinary + abuser), read from ``/metrics`` (so ``METRICS_TOKEN`` unset).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from load import chat
from load.client import ProtocolClient, failure, join, open_session, sim
from load.report import Report, percentile
from load.runner import Shard
from protocol.messages import Ack, Error, Join, Ping, Send

ALONE, ABUSED = "ordinary users alone", "with the abuser"


@dataclass(frozen=True)
class Params:
    users: int = 10  # ordinary users per phase
    turns: int = 12  # per ordinary user per phase
    interval_ms: int = 1000
    ttft_ms: int = 100
    tps: float = 200.0
    tokens: int = 30
    rounds: int = 3
    abuse_connections: int = 60
    abuse_sends_per_s: float = 100.0
    abuse_pings: int = 400  # sent at once on one connection, again after each 4004
    duration_s: float = 300.0


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {"run": uuid.uuid4().hex[:10]}


def _metrics_url(ws_url: str) -> str:
    return (
        ws_url.replace("ws://", "http://", 1)
        .replace("wss://", "https://", 1)
        .replace("/ws", "/metrics")
    )


async def _sum(urls: list[str], family: str) -> float:
    """``family`` summed over every replica's ``/metrics`` (all labels)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for url in urls:
            response = await http.get(_metrics_url(url))
            response.raise_for_status()
            for metrics in text_string_to_metric_families(response.text):
                if metrics.name == family.removesuffix("_total"):
                    total += sum(s.value for s in metrics.samples if s.name == family)
    return total


async def _settled(urls: list[str], deadline_s: float = 30) -> None:
    """Wait until every reply that started has ended, on every replica."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        started = await _sum(urls, "chat_turns_started_total")
        ended = await _sum(urls, "chat_turns_ended_total")
        if ended >= started:
            return
        await asyncio.sleep(0.2)


class Abuser:
    def __init__(self, ctx: Shard, user: str) -> None:
        self.ctx = ctx
        self.user = user
        self.tally: Counter[str] = Counter()
        self.clients: list[tuple[ProtocolClient, uuid.UUID]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        p: Params = self.ctx.params
        urls = self.ctx.urls
        for i in range(p.abuse_connections):
            try:
                client = await open_session(urls[i % len(urls)], self.user)
                joined = await join(client, Join(create={}))  # type: ignore[arg-type]
            except Exception as exc:  # 4005 past CONNECTIONS_PER_USER
                self.tally[f"abuser_refused:{failure(exc)}"] += 1
                continue
            self.clients.append((client, joined.conversation.id))
            self._tasks.append(asyncio.create_task(self._read(client)))
        self._tasks.append(asyncio.create_task(self._send()))
        self._tasks.append(asyncio.create_task(self._flood()))

    async def _read(self, client: ProtocolClient) -> None:
        try:
            while True:
                frame = await client.recv(timeout=3600)
                if isinstance(frame, Ack) and not frame.duplicate:
                    self.tally["abuser_acked"] += 1
                elif isinstance(frame, Error):
                    self.tally[f"abuser_error:{frame.code}"] += 1
        except websockets.ConnectionClosed as exc:
            self.tally[f"abuser_closed:{failure(exc)}"] += 1
        except Exception:
            return

    async def _send(self) -> None:
        p: Params = self.ctx.params
        directive = sim(ttft_ms=p.ttft_ms, tps=p.tps, tokens=p.tokens, chunk=1)
        for n in itertools.count():
            live = [(c, cid) for c, cid in self.clients if c.ws.close_code is None]
            if not live:
                return
            client, cid = live[n % len(live)]
            text = f"abuse {n} {directive}"
            try:
                await client.send(Send(id=f"abuse-{n}", conversation_id=cid, text=text))
                self.tally["abuser_sent"] += 1
            except websockets.ConnectionClosed:
                pass
            await asyncio.sleep(1 / p.abuse_sends_per_s)

    async def _flood(self) -> None:
        """Pings at once on a connection of its own until it is closed, then again."""
        p: Params = self.ctx.params
        while True:
            try:
                client = await open_session(self.ctx.urls[0], f"{self.user}-pings")
            except Exception as exc:
                self.tally[f"abuser_refused:{failure(exc)}"] += 1
                await asyncio.sleep(1)
                continue
            try:
                for k in range(p.abuse_pings):
                    await client.send(Ping(id=f"p{k}"))
                while True:
                    await client.recv(timeout=3600)
            except websockets.ConnectionClosed as exc:
                self.tally[f"abuser_pings_closed:{failure(exc)}"] += 1
            await asyncio.sleep(1)  # an abuser ignores retry_after_ms, within reason

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client, _ in self.clients:
            await client.close()


async def _phase(ctx: Shard, name: str, tag: str) -> int:
    """One phase of ordinary users; their figures go to ``ctx.report`` labelled ``name``.
    Returns the turns they had acknowledged."""
    p: Params = ctx.params
    params = chat.Params(
        users=p.users,
        devices=2,
        turns=p.turns,
        interval_ms=p.interval_ms,
        ttft_ms=p.ttft_ms,
        tps=p.tps,
        tokens=p.tokens,
        duration_s=p.duration_s,
    )
    report = Report("chat", {})
    shard = dataclasses.replace(ctx, params=params, report=report)
    jobs = [
        chat.conversation(shard, f"load-abuse-{ctx.setup['run']}-{tag}-{u}", u, f"{tag}.{u}")
        for u in range(p.users)
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            ctx.report.errors[failure(result)] += 1
    for metric, values in report.samples.items():
        for value in values:
            ctx.report.add(f"{metric} ({name})", value)
    ctx.report.counts.update({f"{k} ({name})": v for k, v in report.counts.items()})
    ctx.report.errors.update(report.errors)
    return report.counts["acked_turns"]


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    if ctx.shard != 0:
        return  # one process: the two conditions must share the same load generator
    report = ctx.report
    started = time.time()
    for r in range(p.rounds):
        for name in (ALONE, ABUSED):
            await _settled(ctx.urls)
            before = await _sum(ctx.urls, "chat_model_requests_total")
            abuser = None
            if name == ABUSED:
                abuser = Abuser(ctx, f"load-abuser-{ctx.setup['run']}-{r}")
                await abuser.start()
            acked = await _phase(ctx, name, f"{r}{name[0]}")
            if abuser is not None:
                await abuser.stop()
                report.counts.update(abuser.tally)
                acked += abuser.tally["abuser_acked"]
            await _settled(ctx.urls)
            requests = await _sum(ctx.urls, "chat_model_requests_total") - before
            # Every model request answers an acknowledged turn: more would mean a turn
            # the server refused reached the model.
            report.counts["lost_model_requests_without_ack"] += max(0, int(requests) - acked)
            report.counts["model_requests"] += int(requests)
    report.measured(started, time.time())


def finish(report: Report) -> None:
    metric = "send → first delta"
    alone = report.samples.get(f"{metric} ({ALONE})", [])
    abused = report.samples.get(f"{metric} ({ABUSED})", [])
    if alone and abused:
        for p, goal in ((99, " (goal ≤ 120)"), (50, "")):
            ratio = percentile(abused, p) / percentile(alone, p)
            report.derived[f"{metric} p{p} with the abuser, % of without{goal}"] = 100 * ratio
