"""Server CPU per turn and per returning device's reconnect, in the steady state.

Per turn: conversations whose devices are already connected and joined (and have each
had a turn, so first-login work and cold caches are behind them) send turns; each turn
is a ~200-token reply in Gemini-shaped chunks. The server's CPU over those turns,
divided by the turns, is split by thread: the event loop's (everything this server
does: the protocol, storage, routing, the model request, fan-out) and the rest (the
embedding model's threads, which the router owns, and the database driver's none).

Per reconnect: every device closes and comes back as a returning device would (connect,
hello with the same user, join with ``after_seq``), and the server's CPU is divided by
the devices.

The python-socketio relay (load/peers/socketio_relay.py) streams the same replies for
the same number of turns beside it: it only relays the model's chunks to the room, with
no storage, routing, identity, sequence numbers or resume, so it is the floor for a
Python process that calls google-genai and fans out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import websockets

from load.client import ProtocolClient, join, open_session, sim, sio_join
from load.peer_fanout import _peers
from load.spawn import spawned_server
from protocol.messages import Ack, Error, Join, Send, TurnEnd


@dataclass(frozen=True)
class TurnParams:
    conversations: int = 10
    devices: int = 2  # per conversation; the first one sends
    turns: int = 20  # measured, per conversation (after one warm-up turn each)
    tokens: int = 200  # per reply, in Gemini-shaped chunks
    tps: float = 4000.0  # fast, so the run is short: the CPU per turn is what counts
    reconnects: int = 3  # rounds of every device reconnecting


@dataclass
class TurnResult:
    turns: int
    turn_ms: float  # server CPU per turn, all threads
    turn_loop_ms: float  # of which the event loop thread
    peer_turn_ms: float  # the python-socketio relay, per turn
    reconnect_ms: float  # server CPU per returning device's connect + hello + join
    reconnects: int

    def lines(self) -> list[str]:
        return [
            f"server CPU per turn ({self.turns} turns, ~200-token replies, Gemini-shaped):",
            f"  this server, all threads      {self.turn_ms:8.2f} ms",
            f"  this server, event loop only  {self.turn_loop_ms:8.2f} ms"
            "   (the rest: the embedding model's threads)",
            f"  python-socketio relay         {self.peer_turn_ms:8.2f} ms",
            f"server CPU per returning device's connect + hello + join ({self.reconnects}):"
            f" {self.reconnect_ms:.2f} ms",
        ]


def thread_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread, of all threads) of process ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    main = total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        total += cpu
        if task.name == str(pid):
            main = cpu
    return main, total


class _Conversation:
    def __init__(self, user: str, devices: list[ProtocolClient], cid: uuid.UUID) -> None:
        self.user = user
        self.devices = devices
        self.cid = cid
        self.last_seq = 0

    async def turn(self, label: str, text: str) -> None:
        sender = self.devices[0]
        await sender.send(Send(id=label, conversation_id=self.cid, text=text))
        # Every device reads until the reply ended; the sender also gets the ack.
        waits = [self._until_end(d, acked=d is sender) for d in self.devices]
        for seq in await asyncio.gather(*waits):
            self.last_seq = max(self.last_seq, seq)

    @staticmethod
    async def _until_end(device: ProtocolClient, *, acked: bool) -> int:
        got_ack = not acked
        while True:
            frame = await device.recv(timeout=60)
            if isinstance(frame, Error):
                raise RuntimeError(f"turn refused: {frame.code}")
            if isinstance(frame, Ack):
                got_ack = True
            if isinstance(frame, TurnEnd):
                if frame.finish_reason != "stop":
                    raise RuntimeError(f"reply ended {frame.finish_reason}")
                if got_ack:
                    return frame.seq

    async def reconnect(self, url: str) -> None:
        for device in self.devices:
            await device.close()
        fresh = []
        for _ in self.devices:
            client = await open_session(url, self.user)
            await join(client, Join(conversation_id=self.cid, after_seq=self.last_seq))
            fresh.append(client)
        self.devices = fresh


async def _ours(p: TurnParams, url: str, pid: int) -> tuple[float, float, float]:
    run = uuid.uuid4().hex[:8]
    text = f"Tell me about it {sim(ttft_ms=0, tps=p.tps, tokens=p.tokens, chunk=0)}"
    conversations: list[_Conversation] = []
    for c in range(p.conversations):
        user = f"bench-turns-{run}-{c}"
        first = await open_session(url, user)
        cid = (await join(first, Join(create={}))).conversation.id  # type: ignore[arg-type]
        others = [await open_session(url, user) for _ in range(1, p.devices)]
        for other in others:
            await join(other, Join(conversation_id=cid))
        conversations.append(_Conversation(user, [first, *others], cid))
    await asyncio.gather(*(c.turn(f"w{i}", text) for i, c in enumerate(conversations)))
    await asyncio.sleep(0.5)  # the warm-up's final writes

    async def turns(i: int, conversation: _Conversation) -> None:
        for k in range(p.turns):
            await conversation.turn(f"t{i}.{k}", text)

    loop_before, all_before = thread_cpu(pid)
    await asyncio.gather(*(turns(i, c) for i, c in enumerate(conversations)))
    await asyncio.sleep(0.5)  # final writes after turn_end belong to the turns
    loop_after, all_after = thread_cpu(pid)
    count = p.conversations * p.turns
    per_turn = (all_after - all_before) / count * 1000
    per_turn_loop = (loop_after - loop_before) / count * 1000

    cpu = 0.0
    for _ in range(p.reconnects):
        await asyncio.sleep(0.3)  # the closes' cleanup is not a reconnect's cost
        before = thread_cpu(pid)[1]
        for conversation in conversations:
            await conversation.reconnect(url)
        await asyncio.sleep(0.3)
        cpu += thread_cpu(pid)[1] - before
    per_reconnect = cpu / (p.reconnects * p.conversations * p.devices) * 1000
    for conversation in conversations:
        for device in conversation.devices:
            await device.close()
    return per_turn, per_turn_loop, per_reconnect


async def _peer(p: TurnParams, url: str, process: psutil.Process) -> float:
    text = f"go {sim(ttft_ms=0, tps=p.tps, tokens=p.tokens, chunk=0)}"

    async def until_end(ws: websockets.ClientConnection) -> None:
        async for message in ws:
            if message == "2":
                await ws.send("3")
            elif str(message).startswith('42["e"'):
                return

    rooms = [
        [await sio_join(url, f"c{c}") for _ in range(p.devices)] for c in range(p.conversations)
    ]

    async def turns(c: int, room: list[websockets.ClientConnection]) -> None:
        for _ in range(p.turns):
            ends = [asyncio.create_task(until_end(ws)) for ws in room]
            message = orjson.dumps(["chat", {"room": f"c{c}", "text": text}]).decode()
            await room[0].send("42" + message)
            await asyncio.gather(*ends)

    await asyncio.gather(*(turns(c, room) for c, room in enumerate(rooms)))  # warm-up
    times = process.cpu_times()
    before = times.user + times.system
    await asyncio.gather(*(turns(c, room) for c, room in enumerate(rooms)))
    times = process.cpu_times()
    for room in rooms:
        for ws in room:
            await ws.close()
    return float(times.user + times.system - before) / (p.conversations * p.turns) * 1000


def run(p: TurnParams) -> TurnResult:
    with spawned_server(TURNS_PER_MINUTE="100000", CONCURRENT_REPLIES="100") as server:
        time.sleep(0.5)
        pid = server.process.pid
        print(f"bench_turns: server pid {pid}", file=sys.stderr)
        ours = asyncio.run(_ours(p, server.ws_url, pid))
        with _peers("load.peers.socketio_relay", 1, "--gemini", server.sim_url) as peers:
            port, process = peers[0]
            sio_url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            peer = asyncio.run(_peer(p, sio_url, process))
    per_turn, per_turn_loop, per_reconnect = ours
    return TurnResult(
        turns=p.conversations * p.turns,
        turn_ms=per_turn,
        turn_loop_ms=per_turn_loop,
        peer_turn_ms=peer,
        reconnect_ms=per_reconnect,
        reconnects=p.reconnects * p.conversations * p.devices,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench_turns", description=__doc__)
    for name, value in asdict(TurnParams()).items():
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = parser.parse_args(argv)
    result = run(TurnParams(**vars(args)))
    for line in result.lines():
        print(line)
    return 0


def as_json(result: TurnResult) -> dict[str, Any]:
    return asdict(result)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
