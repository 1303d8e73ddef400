"""The ``capacity`` scenario: how many people chatting at once a deployment serves within
its service level, ramped up step by step.

A person has one conversation on one to three devices (seeded, so runs repeat). They
send a turn, wait for the reply to end, think (exponential, ``think_s`` on average; the
first think is spread evenly so people do not start together), and send the next. Replies
are ``tokens`` long in Gemini-shaped chunks (24-64 tokens, varying) after ``ttft_ms``,
each chunk stamped with the simulator's emit time. ``ramp`` lists how many people each
step has; a step lasts ``step_s`` and ends with every device closed and every
acknowledged turn checked against the history.

Service level of a step (all of it must hold):

- send → ack p99 ≤ ``ack_ms`` (100);
- the first delta p99 ≤ ``first_ms`` (50) after the simulator emitted the reply's first
  chunk: what the server adds before the first text, the model's own time excluded;
- chunk emit → device p99 ≤ ``chunk_ms`` (20), on every device;
- nothing lost and no error.

``finish`` reports, per step, its figures and verdict, and the largest step that met it
(``people_ok``; per replica: ``people_ok_per_replica``, each replica being one process,
so one core at most). Turns per second follow: people / (think + reply time).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import websockets

from load.client import (
    ProtocolClient,
    check_end,
    count_lost,
    join,
    open_session,
    sim,
    sio_join,
    stamps,
)
from load.report import Report, percentile
from load.runner import Shard, run_clients
from protocol.messages import Ack, Delta, Error, Join, Send, TurnEnd


@dataclass(frozen=True)
class Params:
    ramp: str = "20,40,80,160"  # people at each step
    step_s: float = 60.0
    think_s: float = 20.0  # mean time between a reply's end and the next turn
    max_devices: int = 3  # devices per person: 1 to this
    tokens: int = 200
    tps: float = 200.0
    ttft_ms: int = 300
    ack_ms: float = 100.0
    first_ms: float = 50.0
    chunk_ms: float = 20.0
    seed: int = 1
    # "server", or "socketio": the python-socketio relay (load/peers/socketio_relay.py)
    # through the same ramp; it acks a turn at once and relays the model's chunks to
    # the room, and stores, routes, sequences and resumes nothing.
    target: str = "server"
    duration_s: float = 1800.0  # hard bound for the whole run


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {"run": uuid.uuid4().hex[:8]}


def steps(p: Params) -> list[int]:
    return [int(n) for n in p.ramp.split(",") if n.strip()]


def metric(people: int, name: str) -> str:
    return f"{people:>5} people: {name}"


class _Device:
    def __init__(self, client: ProtocolClient, report: Report, people: int) -> None:
        self.client = client
        self.report = report
        self.people = people
        self.acks: asyncio.Queue[Ack | Error] = asyncio.Queue()
        self.ends: asyncio.Queue[TurnEnd] = asyncio.Queue()
        self.first: asyncio.Queue[float] = asyncio.Queue()  # server lag of a first delta, ms
        self.texts: dict[uuid.UUID, str] = {}

    async def send(self, cid: uuid.UUID | None, send_id: str, text: str) -> None:
        assert cid is not None
        await self.client.send(Send(id=send_id, conversation_id=cid, text=text))

    async def close(self) -> None:
        await self.client.close()

    async def receive(self) -> None:
        while True:
            frame = await self.client.recv(timeout=3600)
            now = time.time()
            if isinstance(frame, Delta):
                have = self.texts.get(frame.turn_id, "")
                emitted = stamps(frame.text)
                if not have and emitted:
                    self.first.put_nowait((now - emitted[0]) * 1000)
                self.texts[frame.turn_id] = have[: frame.offset] + frame.text
                for at in emitted:
                    self.report.add(metric(self.people, "chunk emit → device"), (now - at) * 1000)
            elif isinstance(frame, TurnEnd):
                check_end(self.report, frame, self.texts.get(frame.turn_id))
                self.ends.put_nowait(frame)
            elif isinstance(frame, Ack | Error):
                self.acks.put_nowait(frame)


class _SioDevice:
    """The same device on the socket.io relay: its room is the conversation; a turn is a
    ``chat`` event with an ack id (acked at once), chunks come as ``d``, the end as ``e``."""

    def __init__(self, ws: websockets.ClientConnection, report: Report, people: int) -> None:
        self.ws = ws
        self.report = report
        self.people = people
        self.acks: asyncio.Queue[bool] = asyncio.Queue()
        self.ends: asyncio.Queue[bool] = asyncio.Queue()
        self.first: asyncio.Queue[float] = asyncio.Queue()
        self.text = ""
        self.room = ""

    @classmethod
    async def connect(cls, url: str, room: str, report: Report, people: int) -> _SioDevice:
        device = cls(await sio_join(url, room), report, people)
        device.room = room
        return device

    async def send(self, cid: uuid.UUID | None, send_id: str, text: str) -> None:
        await self.ws.send(
            "421" + orjson.dumps(["chat", {"room": self.room, "text": text}]).decode()
        )

    async def close(self) -> None:
        await self.ws.close()

    async def receive(self) -> None:
        async for message in self.ws:
            frame = str(message)
            now = time.time()
            if frame == "2":
                await self.ws.send("3")
            elif frame.startswith('42["d"'):
                text = orjson.loads(frame[2:])[1]
                emitted = stamps(text)
                if not self.text and emitted:
                    self.first.put_nowait((now - emitted[0]) * 1000)
                self.text += text
                for at in emitted:
                    self.report.add(metric(self.people, "chunk emit → device"), (now - at) * 1000)
            elif frame.startswith('42["e"'):
                self.text = ""
                self.ends.put_nowait(True)
            elif frame.startswith("431"):
                self.acks.put_nowait(True)


async def _devices(
    ctx: Shard, people: int, index: int, count: int
) -> tuple[list[_Device] | list[_SioDevice], uuid.UUID | None]:
    """A person's devices, connected and joined to their conversation (or room)."""
    urls, report, user = ctx.urls, ctx.report, f"cap-{ctx.setup['run']}-{people}-{index}"
    if ctx.params.target == "socketio":
        room = f"{user}-room"
        sio = [
            await _SioDevice.connect(urls[(index + d) % len(urls)], room, report, people)
            for d in range(count)
        ]
        return sio, None
    devices: list[_Device] = []
    cid: uuid.UUID | None = None
    for d in range(count):
        client = await open_session(urls[(index + d) % len(urls)], user)
        joined = await join(
            client,
            Join(create={}) if cid is None else Join(conversation_id=cid),  # type: ignore[arg-type]
        )
        cid = joined.conversation.id
        devices.append(_Device(client, report, people))
    return devices, cid


async def person(ctx: Shard, people: int, index: int, deadline: float) -> None:
    p: Params = ctx.params
    report = ctx.report
    draw = random.Random(p.seed * 1_000_003 + people * 1009 + index)
    devices: list[_Device] | list[_SioDevice] = []
    readers: list[asyncio.Task[None]] = []
    acked: set[str] = set()
    cid: uuid.UUID | None = None
    try:
        devices, cid = await _devices(ctx, people, index, draw.randint(1, max(1, p.max_devices)))
        readers = [asyncio.create_task(d.receive()) for d in devices]
        sender = devices[0]
        directive = sim(ttft_ms=p.ttft_ms, tps=p.tps, tokens=p.tokens, chunk=0)
        pause = draw.uniform(0, p.think_s)
        k = 0
        while time.time() + pause < deadline:
            await asyncio.sleep(pause)
            sent = time.perf_counter()
            send_id = f"{index}-{k}"
            await sender.send(cid, send_id, f"turn {k} {directive}")
            answer = await sender.acks.get()
            if isinstance(answer, Error):
                report.errors[answer.code] += 1
                break
            acked.add(send_id)
            report.add(metric(people, "send → ack"), (time.perf_counter() - sent) * 1000)
            report.counts[f"turns:{people}"] += 1
            lag = await asyncio.wait_for(sender.first.get(), 120)
            report.add(metric(people, "first delta after the model's"), lag)
            for device in devices:
                await device.ends.get()
            k += 1
            pause = draw.expovariate(1 / p.think_s)
        if cid is not None and acked and isinstance(sender, _Device):  # the relay stores none
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)  # one reader at a time
            await count_lost(sender.client, report, cid, acked, limit=2 * len(acked) + 10)
    finally:
        for reader in readers:
            reader.cancel()
        for device in devices:
            await device.close()


async def run(ctx: Shard) -> None:
    p: Params = ctx.params
    # Warm-up (not a step): the first model calls and embeddings of a fresh server.
    warm = time.time() + min(p.step_s, 5.0)
    await run_clients(ctx, [person(ctx, 0, i, warm) for i in ctx.mine(2)])
    for people in steps(p):
        await ctx.together()
        deadline = time.time() + p.step_s
        started = time.time()
        await run_clients(ctx, [person(ctx, people, i, deadline) for i in ctx.mine(people)])
        ctx.report.counts[f"step_s:{people}"] = int(time.time() - started)
        if ctx.shards == 1 and not _step(ctx.report, p, people)["ok"]:
            break  # the ramp found where the service level breaks (one load process)


_PEOPLE = re.compile(r"^\s*(\d+) people: (.*)$")


def verdicts(report: Report, p: Params) -> list[dict[str, Any]]:
    """Each step's p99s and whether it met the service level."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for name, values in report.samples.items():
        match = _PEOPLE.match(name)
        if match:
            by_step.setdefault(int(match.group(1)), {})[match.group(2)] = values
    return [
        _step(report, p, people, by_step.get(people, {}))
        for people in steps(p)
        if f"step_s:{people}" in report.counts  # a ramp stops at the first broken step
    ]


def _step(
    report: Report, p: Params, people: int, got: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """One step's p99s and verdict (``got``: its samples by metric, else found here)."""
    if got is None:
        prefix = metric(people, "")
        got = {k[len(prefix) :]: v for k, v in report.samples.items() if k.startswith(prefix)}
    lost = sum(v for k, v in report.counts.items() if k.startswith("lost"))
    p99 = {name: percentile(values, 99) for name, values in got.items()}
    ack = p99.get("send → ack", float("inf"))
    first = p99.get("first delta after the model's", float("inf"))
    chunk = p99.get("chunk emit → device", float("inf"))
    ok = ack <= p.ack_ms and first <= p.first_ms and chunk <= p.chunk_ms
    step_s = max(1, report.counts.get(f"step_s:{people}", int(p.step_s)))
    return {
        "people": people,
        "turns_per_s": report.counts.get(f"turns:{people}", 0) / step_s,
        "ack_p99_ms": ack,
        "first_p99_ms": first,
        "chunk_p99_ms": chunk,
        "ok": ok and not lost and not report.errors,
    }


def finish(report: Report) -> None:
    p = Params(**{k: v for k, v in report.params.items() if k in Params.__dataclass_fields__})
    rows = verdicts(report, p)
    passed = [r["people"] for r in rows if r["ok"]]
    # The largest step before the first one that broke the service level.
    best = 0
    for row in rows:
        if not row["ok"]:
            break
        best = row["people"]
    replicas = max(1, int(report.params.get("urls", 1)))
    report.derived["people_ok"] = best
    report.derived["people_ok_per_replica"] = best / replicas
    report.derived["steps_ok"] = len(passed)
    for row in rows:
        n = row["people"]
        report.derived[f"{n} people: turns/s"] = round(row["turns_per_s"], 2)
        report.derived[f"{n} people: ok"] = 1.0 if row["ok"] else 0.0
