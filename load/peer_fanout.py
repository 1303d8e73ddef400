"""Fan-out beside the peers (``make bench``): one conversation, many subscribers, one long reply.

Targets, each started here as its own process and measured the same way:
- ``server``: this server (single node). The subscribers are devices of one user joined
  to one conversation; a publisher device sends a turn whose simulated reply is
  ``messages`` tokens of ``size`` characters, streamed as fast as the simulator can.
- ``ws``: a bare ``websockets`` broadcast server (load/peers/ws_broadcast.py).
- ``socketio``: python-socketio on uvicorn (load/peers/socketio_relay.py).

Reported: deliveries per second (subscribers x messages / time from the publish to the
last subscriber having everything), per server CPU-second, and server RSS per idle
connection. This server may merge deltas for a subscriber that lags (by design), so it
can need fewer frames for the same text: a delivery here is a message's content
arriving, whatever the framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import psutil
import websockets

from load import fanout
from load.client import ProtocolClient
from load.spawn import EmbeddedRedis, _free_port, spawned_servers
from protocol.messages import Ack, Error, Join, Joined, Send

TARGETS = ("server", "ws", "socketio")


@dataclass(frozen=True)
class FanoutParams:
    subscribers: int = 1000
    messages: int = 500
    size: int = 100
    connect_batch: int = 100  # connections opened at once
    timeout_s: float = 120.0
    replicas: int = 1  # > 1: server processes sharing one Redis, subscribers spread evenly


@dataclass
class FanoutResult:
    target: str
    replicas: int
    subscribers: int
    messages: int
    seconds: float
    server_cpu_s: float
    rss_per_connection_kib: float
    frames_per_subscriber: float  # < messages when deltas were merged for a lagging client

    @property
    def deliveries_per_s(self) -> float:
        return self.subscribers * self.messages / self.seconds

    @property
    def deliveries_per_cpu_s(self) -> float:
        return self.subscribers * self.messages / max(self.server_cpu_s, 1e-9)


@contextlib.contextmanager
def _peers(module: str, count: int, *args: str) -> Iterator[list[tuple[int, psutil.Process]]]:
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(count):
            port = _free_port()
            command = [sys.executable, "-m", module, "--port", str(port), *args]
            started.append((port, subprocess.Popen(command)))
        deadline = time.monotonic() + 20
        for port, process in started:
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{module} did not start")
                time.sleep(0.05)
        yield [(port, psutil.Process(process.pid)) for port, process in started]
    finally:
        for _, process in started:
            process.terminate()
        for _, process in started:
            process.wait(timeout=20)


async def _connect_all(count: int, batch: int, connect: object) -> list[object]:
    clients: list[object] = []
    for start in range(0, count, batch):
        clients += await asyncio.gather(*(connect() for _ in range(min(batch, count - start))))  # type: ignore[operator]
    return clients


def _rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _measure(
    target: str,
    params: FanoutParams,
    processes: list[psutil.Process],
    connect: object,
    receive: object,
    publish: object,
) -> FanoutResult:
    await asyncio.sleep(0.5)
    rss_before = sum(map(_rss, processes))
    subscribers = await _connect_all(params.subscribers, params.connect_batch, connect)
    await asyncio.sleep(1.0)  # let allocations settle
    rss_per = (sum(map(_rss, processes)) - rss_before) / params.subscribers / 1024
    cpu_before = sum(map(_cpu, processes))
    started = time.perf_counter()
    waiting = [asyncio.create_task(receive(s)) for s in subscribers]  # type: ignore[operator]
    await publish()  # type: ignore[operator]
    async with asyncio.timeout(params.timeout_s):
        frames = await asyncio.gather(*waiting)
    seconds = time.perf_counter() - started
    cpu = sum(map(_cpu, processes)) - cpu_before
    for s in subscribers:
        with contextlib.suppress(Exception):
            await s.ws.close() if isinstance(s, ProtocolClient) else await s.close()  # type: ignore[attr-defined]
    average_frames = sum(frames) / len(frames)
    return FanoutResult(
        target,
        len(processes),
        params.subscribers,
        params.messages,
        seconds,
        cpu,
        rss_per,
        average_frames,
    )


async def _server(params: FanoutParams, targets: list[tuple[int, psutil.Process]]) -> FanoutResult:
    urls = [f"ws://127.0.0.1:{port}/ws" for port, _ in targets]
    spread = itertools.cycle(urls)
    user = f"fanout-{time.monotonic_ns()}"
    publisher = await ProtocolClient.connect(urls[0])
    await publisher.say_hello(user)
    await publisher.send(Join(create={}))  # type: ignore[arg-type]
    joined = await publisher.recv()
    assert isinstance(joined, Joined)
    cid = joined.conversation.id
    word = "x" * params.size
    expected = len(" ".join([word] * params.messages))

    async def connect() -> ProtocolClient:
        client = await ProtocolClient.connect(next(spread), max_queue=None)
        await client.say_hello(user)
        await client.send(Join(conversation_id=cid))
        while not isinstance(await client.recv(), Joined):
            pass
        return client

    async def receive(client: ProtocolClient) -> int:
        have = frames = 0
        async for raw in client.ws:
            frame = orjson.loads(raw)
            if frame["type"] == "delta":
                have = max(have, frame["offset"] + len(frame["text"]))
                frames += 1
            elif frame["type"] == "turn_end":
                break
        assert have == expected, f"subscriber got {have} of {expected} characters"
        return frames

    async def publish() -> None:
        reply = " ".join([word] * params.messages)
        directive = f'[[sim ttft_ms=0 tps=1000000 reply="{reply}"]]'
        await publisher.send(Send(id="fanout", conversation_id=cid, text=directive))
        while not isinstance(frame := await publisher.recv(), Ack):
            if isinstance(frame, Error):
                raise RuntimeError(f"publish refused: {frame.code}: {frame.message}")

    try:
        processes = [process for _, process in targets]
        return await _measure("server", params, processes, connect, receive, publish)
    finally:
        await publisher.close()


async def _ws(params: FanoutParams, targets: list[tuple[int, psutil.Process]]) -> FanoutResult:
    (port, process), *_ = targets
    url = f"ws://127.0.0.1:{port}"
    publisher = await websockets.connect(url, compression=None)

    async def connect() -> websockets.ClientConnection:
        return await websockets.connect(url, compression=None, max_queue=None)

    async def receive(ws: websockets.ClientConnection) -> int:
        count = 0
        async for message in ws:
            if message == "end":
                break
            count += 1
        assert count == params.messages
        return count

    async def publish() -> None:
        await publisher.send(f"pub {params.messages} {params.size}")

    try:
        return await _measure("ws", params, [process], connect, receive, publish)
    finally:
        await publisher.close()


async def _socketio(
    params: FanoutParams, targets: list[tuple[int, psutil.Process]]
) -> FanoutResult:
    urls = [f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" for port, _ in targets]
    spread = itertools.cycle(urls)

    async def connect(url: str | None = None) -> websockets.ClientConnection:
        ws = await websockets.connect(url or next(spread), compression=None, max_queue=None)
        await ws.recv()  # engine.io open packet
        await ws.send("40")  # connect to the default namespace
        while not str(await ws.recv()).startswith("40"):
            pass
        return ws

    publisher = await connect(urls[0])

    async def receive(ws: websockets.ClientConnection) -> int:
        count = 0
        async for message in ws:
            text = str(message)
            if text == "2":
                await ws.send("3")  # engine.io ping → pong
            elif text.startswith('42["end"'):
                break
            elif text.startswith('42["m"'):
                count += 1
        assert count == params.messages
        return count

    async def publish() -> None:
        await publisher.send(
            orjson.dumps(["pub", f"pub {params.messages} {params.size}"]).decode().join(["42", ""])
        )

    try:
        processes = [process for _, process in targets]
        return await _measure("socketio", params, processes, connect, receive, publish)
    finally:
        await publisher.close()


def server_env(params: FanoutParams) -> dict[str, str]:
    """This server's settings for a fan-out of ``params``: room for the reply and for
    every subscriber (one user's devices)."""
    room = str(2 * params.messages * (params.size + 1) + 1000)  # the [[sim]] reply
    env = {"OUTBOX_FRAMES": str(params.messages * 4), **fanout.SERVER_ENV}
    return env | {"MAX_TEXT_CHARS": room, "MAX_FRAME_BYTES": room}


def run(target: str, params: FanoutParams) -> FanoutResult:
    if params.replicas > 1 and target == "ws":
        raise ValueError("the bare websockets peer has no multi-replica mode")
    with contextlib.ExitStack() as stack:
        redis_url = None
        if params.replicas > 1:
            redis_url = stack.enter_context(_redis()).url
        if target == "server":
            env = server_env(params)
            if redis_url:
                env["REDIS_URL"] = redis_url
            servers = stack.enter_context(spawned_servers(params.replicas, **env))
            targets = [(s.port, psutil.Process(s.process.pid)) for s in servers]
            return asyncio.run(_server(params, targets))
        module = {"ws": "load.peers.ws_broadcast", "socketio": "load.peers.socketio_relay"}[target]
        extra = ("--redis", redis_url) if redis_url else ()
        targets = stack.enter_context(_peers(module, params.replicas, *extra))
        measure = _ws if target == "ws" else _socketio
        return asyncio.run(measure(params, targets))


@contextlib.contextmanager
def _redis() -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis()
    try:
        yield redis
    finally:
        redis.stop()
