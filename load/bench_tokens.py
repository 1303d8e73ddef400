"""Server CPU per streamed token: this server vs python-socketio doing the token relay.

Both stream the same replies from the same Gemini simulator through google-genai's
``generate_content_stream`` (the chunks are stamped, the same bytes for both) and send
every chunk to every device of the conversation. This server does its whole job for a
turn (hello, join, routing, storing the turn and the reply, sequence numbers, shared
stream state); the peer (load/peers/socketio_relay.py) only relays. Also measured, in
this process: what google-genai alone costs to parse the same stream, which both pay.

Two figures per target: CPU per token with the whole turn included (one reply of
``tokens``), and the marginal cost of one more token — the slope between replies of
``tokens`` and ``4 * tokens`` — which leaves out what a turn costs once (the model
request, routing, storage) and is what "per streamed token" means for a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from dataclasses import dataclass, replace

import orjson
import psutil
import websockets

from chat_server.llm.simulator import SimConfig, chunk_sizes
from load import chat
from load.client import sim, sio_join
from load.peer_fanout import _cpu, _peers, _redis
from load.runner import execute
from load.spawn import spawned_deployment


@dataclass(frozen=True)
class TokenParams:
    conversations: int = 20
    devices: int = 2
    tokens: int = 100  # per reply (and 4x that), one reply per conversation
    chunk: int = 1  # tokens per streamed chunk; 0: Gemini-shaped (24-64, varying)
    tps: float = 400.0
    # > 1: each target runs this many processes sharing one Redis; a conversation's
    # devices are spread over them, so every token crosses Redis to reach some device.
    replicas: int = 1


SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
TARGETS = ("this server", "python-socketio relay", "google-genai alone")


@dataclass
class TokenResult:
    per_token_us: dict[str, float]  # CPU per generated token, whole turn included
    marginal_us: dict[str, float]  # CPU per additional token (slope)

    def lines(self) -> list[str]:
        lines = [f"{'':24}{'µs/token (turn incl.)':>24}{'µs per extra token':>22}"]
        for target in TARGETS:
            lines.append(
                f"{target:24}{self.per_token_us[target]:>24.0f}{self.marginal_us[target]:>22.0f}"
            )
        return lines


def _directive(p: TokenParams) -> str:
    return sim(ttft_ms=0, tps=p.tps, tokens=p.tokens, chunk=p.chunk)


def _ours(p: TokenParams, ws_urls: list[str], pids: list[int]) -> tuple[float, int]:
    params = chat.Params(
        users=p.conversations,
        devices=p.devices,
        turns=1,
        interval_ms=0,
        ttft_ms=0,
        tps=p.tps,
        tokens=p.tokens,
        chunk=p.chunk,
    )
    report = execute("chat", ws_urls, params, pids=pids)
    if report.errors or report.counts.get("lost_turns") or report.counts.get("lost_reply_text"):
        raise RuntimeError(f"token run failed: {report.errors} {report.counts}")
    chunks = report.counts["deliveries"] // p.devices
    return report.server["cpu_s"], chunks


async def _socketio_run(
    p: TokenParams, urls: list[str], processes: list[psutil.Process]
) -> tuple[float, int]:
    async def receive(ws: websockets.ClientConnection) -> int:
        count = 0
        async for message in ws:
            text = str(message)
            if text == "2":
                await ws.send("3")
            elif text.startswith('42["d"'):
                count += 1
            elif text.startswith('42["e"'):
                return count
        return count

    rooms = [
        [await sio_join(urls[d % len(urls)], f"c{c}") for d in range(p.devices)]
        for c in range(p.conversations)
    ]
    before = sum(_cpu(process) for process in processes)
    readers = [asyncio.create_task(receive(ws)) for room in rooms for ws in room]
    text = f"go {_directive(p)}"
    for c, room in enumerate(rooms):
        await room[0].send("42" + orjson.dumps(["chat", {"room": f"c{c}", "text": text}]).decode())
    async with asyncio.timeout(120):
        counts = await asyncio.gather(*readers)
    cpu = sum(_cpu(process) for process in processes) - before
    for room in rooms:
        for ws in room:
            await ws.close()
    return cpu, sum(counts) // p.devices


async def _sdk_alone(p: TokenParams, sim_url: str) -> tuple[float, int]:
    """google-genai streaming the same replies, the call the relay peer makes."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="sim", http_options=types.HttpOptions(base_url=sim_url))

    async def one() -> int:
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents=f"go {_directive(p)}"
        )
        return sum([1 async for chunk in stream if chunk.text])

    await one()  # warm: connection and imports
    before = _own_cpu()
    chunks = sum(await asyncio.gather(*(one() for _ in range(p.conversations))))
    cpu = _own_cpu() - before
    await client.aio.aclose()
    return cpu, chunks


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(p: TokenParams) -> dict[str, float]:
    """CPU seconds each target spent on one round of ``p``'s replies."""
    with spawned_deployment(p.replicas) as servers:
        time.sleep(0.5)
        ours_cpu, ours_chunks = _ours(
            p, [s.ws_url for s in servers], [s.process.pid for s in servers]
        )
        sim_url = servers[0].sim_url
        with contextlib.ExitStack() as stack:
            extra: tuple[str, ...] = ()
            if p.replicas > 1:
                extra = ("--redis", stack.enter_context(_redis()).url)
            peers = stack.enter_context(
                _peers("load.peers.socketio_relay", p.replicas, "--gemini", sim_url, *extra)
            )
            urls = [
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" for port, _ in peers
            ]
            sio_cpu, sio_chunks = asyncio.run(
                _socketio_run(p, urls, [process for _, process in peers])
            )
        sdk_cpu, sdk_chunks = asyncio.run(_sdk_alone(p, sim_url))
    expected = p.conversations * len(chunk_sizes(SimConfig(chunk_tokens=p.chunk), p.tokens))
    if not ours_chunks == sio_chunks == sdk_chunks == expected:
        raise RuntimeError(f"chunks: {ours_chunks}, {sio_chunks}, {sdk_chunks} != {expected}")
    return dict(zip(TARGETS, (ours_cpu, sio_cpu, sdk_cpu), strict=True))


def run(p: TokenParams) -> TokenResult:
    short = _measure(p)
    longer = replace(p, tokens=4 * p.tokens)
    long = _measure(longer)
    extra = p.conversations * (longer.tokens - p.tokens)
    return TokenResult(
        per_token_us={t: short[t] / (p.conversations * p.tokens) * 1e6 for t in TARGETS},
        marginal_us={t: (long[t] - short[t]) / extra * 1e6 for t in TARGETS},
    )
