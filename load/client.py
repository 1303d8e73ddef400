"""A protocol client for load runs and tests: one WebSocket, typed frames, timestamps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Self

import orjson
import websockets

from chat_server.llm.simulator import STAMP
from load.report import Report
from protocol import decode_server, encode
from protocol.messages import (
    ClientMessage,
    Error,
    Hello,
    History,
    HistoryPage,
    Join,
    Joined,
    Presence,
    ServerMessage,
    SessionOptions,
    TurnEnd,
    Welcome,
)


class ProtocolClient:
    """Presence frames arrive whenever a device joins or leaves anywhere; they are set
    aside in ``presence`` (newest last) so callers read the other frames in order."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.presence: list[Presence] = []

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Self:
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("compression", None)
        return cls(await websockets.connect(url, **kwargs))

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: ClientMessage) -> None:
        await self.ws.send(encode(message).decode())

    async def send_raw(self, data: str | bytes | dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(data).decode() if isinstance(data, dict) else data)

    async def recv(self, timeout: float = 10) -> ServerMessage:
        async with asyncio.timeout(timeout):
            while True:
                message = decode_server(await self.ws.recv())
                if not isinstance(message, Presence):
                    return message
                self.presence.append(message)

    async def say_hello(
        self, token: str, options: SessionOptions | None = None, *, timeout: float = 10
    ) -> ServerMessage:
        await self.send(Hello(token=token, options=options or SessionOptions()))
        return await self.recv(timeout)


class Refused(Exception):
    """The server answered a hello or a join with something else (an error frame)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def hello(
    client: ProtocolClient, user: str, options: SessionOptions | None = None, *, timeout: float = 10
) -> Welcome:
    """Say hello on an open connection; ``Refused`` (and closed) unless welcomed within
    ``timeout`` seconds."""
    welcome = await client.say_hello(user, options, timeout=timeout)
    if not isinstance(welcome, Welcome):
        await client.close()
        raise Refused(welcome.code if isinstance(welcome, Error) else type(welcome).__name__)
    return welcome


async def open_session(
    url: str,
    user: str,
    options: SessionOptions | None = None,
    *,
    timeout: float = 10,
    **kwargs: Any,
) -> ProtocolClient:
    """Connect and say hello; ``Refused`` unless the server welcomes the device (within
    ``timeout`` seconds of the hello)."""
    client = await ProtocolClient.connect(url, **kwargs)
    await hello(client, user, options, timeout=timeout)
    return client


async def join(client: ProtocolClient, join: Join, *, timeout: float = 10) -> Joined:
    """Send a join and return its ``joined`` (frames before it are not expected)."""
    await client.send(join)
    joined = await client.recv(timeout)
    if not isinstance(joined, Joined):
        raise Refused(joined.code if isinstance(joined, Error) else type(joined).__name__)
    return joined


async def count_lost(
    client: ProtocolClient, report: Report, cid: uuid.UUID, acked: set[str], limit: int
) -> None:
    """Read the conversation's history and count the acknowledged sends (by client id)
    that are not stored: ``lost_turns`` must stay 0."""
    await client.send(History(conversation_id=cid, limit=limit))
    while not isinstance(page := await client.recv(), HistoryPage):
        pass
    stored = {m.client_id for m in page.messages if m.role == "user"}
    report.counts["acked_turns"] += len(acked)
    report.counts["lost_turns"] += len(acked - stored)


def check_end(report: Report, end: TurnEnd, shown: str | None) -> None:
    """A reply's end against the text a device was shown: a reply that did not stop is
    an error (by its finish reason); one that did must be exactly its stored text, else
    ``lost_reply_text``."""
    if end.finish_reason != "stop":
        report.errors[f"finish:{end.finish_reason}"] += 1
    elif shown != end.message.text:
        report.counts["lost_reply_text"] += 1


def failure(exc: BaseException) -> str:
    """How a client's run ended badly, as an error code for the report."""
    if isinstance(exc, Refused):
        return exc.code
    if isinstance(exc, websockets.ConnectionClosed):
        return f"close:{exc.rcvd.code}" if exc.rcvd is not None else "close:abnormal"
    return type(exc).__name__


def sim(*, ttft_ms: int, tps: float, tokens: int, chunk: int) -> str:
    """The ``[[sim]]`` directive for a reply paced like this, each chunk stamped with
    the simulator's emit time (``stamp=1``)."""
    return f"[[sim ttft_ms={ttft_ms} tps={tps} tokens={tokens} chunk={chunk} stamp=1]]"


def stamps(text: str) -> list[float]:
    """The simulator emit times (wall clock, seconds) inside a piece of reply text."""
    return [float(s) for s in STAMP.findall(text)]


async def sio_join(url: str, room: str) -> websockets.ClientConnection:
    """A device on the python-socketio relay (load/peers/socketio_relay.py): the
    engine.io and socket.io handshakes, then ``join`` of ``room``, acked by the relay."""
    ws = await websockets.connect(url, compression=None, max_queue=None, open_timeout=30)
    await ws.recv()  # engine.io open
    await ws.send("40")
    while not str(await ws.recv()).startswith("40"):
        pass
    await ws.send("420" + orjson.dumps(["join", room]).decode())
    while not str(await ws.recv()).startswith("430"):  # the join's ack
        pass
    return ws
