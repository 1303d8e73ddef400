"""A test client speaking protocol/ over a real WebSocket."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import websockets

from load.client import ProtocolClient
from protocol import decode_server
from protocol.messages import (
    Delta,
    Hello,
    Join,
    Joined,
    Presence,
    ServerMessage,
    SessionOptions,
    TurnEnd,
    Welcome,
)

T = TypeVar("T")


class Client(ProtocolClient):
    """The load harness's protocol client plus assertions for tests."""

    async def presence_where(
        self, check: Callable[[Presence], bool], timeout: float = 10
    ) -> Presence:
        """Wait until a presence frame satisfies ``check`` (other frames are dropped)."""
        async with asyncio.timeout(timeout):
            while not (self.presence and check(self.presence[-1])):
                message = decode_server(await self.ws.recv())
                if isinstance(message, Presence):
                    self.presence.append(message)
        return self.presence[-1]

    async def expect(self, kind: type[T], timeout: float = 10) -> T:
        message = await self.recv(timeout)
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def until(self, kind: type[T], timeout: float = 15) -> tuple[T, list[ServerMessage]]:
        """Read until a ``kind`` frame; return it and every frame before it."""
        seen: list[ServerMessage] = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if isinstance(message, kind):
                    return message, seen
                seen.append(message)

    async def hello(
        self,
        user: str | None = None,
        token: str | None = None,
        options: SessionOptions | None = None,
    ) -> Welcome:
        token = token if token is not None else user or new_user()
        await self.send(Hello(token=token, options=options or SessionOptions()))
        return await self.expect(Welcome)

    async def create(self, **create: Any) -> uuid.UUID:
        from protocol.messages import ConversationCreate

        await self.send(Join(create=ConversationCreate(**create)))
        joined = await self.expect(Joined)
        return joined.conversation.id

    async def closed_with(self, timeout: float = 10) -> int:
        """Wait for the server to close; return its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "connection dropped without a close frame"
            return exc.rcvd.code
        raise AssertionError("unreachable")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def reply_text(frames: list[ServerMessage], turn_id: uuid.UUID) -> str:
    """Reassemble a reply from deltas, using offsets, checking for gaps and overlaps."""
    text = ""
    for frame in frames:
        if isinstance(frame, Delta) and frame.turn_id == turn_id:
            assert frame.offset == len(text), f"delta at {frame.offset}, have {len(text)}"
            text += frame.text
    return text


def directive(**kw: Any) -> str:
    """A ``[[sim ...]]`` directive for the simulator."""
    return "[[sim " + " ".join(f"{k}={v}" for k, v in kw.items()) + "]]"


def turn_end(frames: list[ServerMessage]) -> TurnEnd:
    ends = [f for f in frames if isinstance(f, TurnEnd)]
    assert ends, "no turn_end"
    return ends[-1]


async def two_devices(url: str, options: SessionOptions) -> tuple[str, Client, Client, uuid.UUID]:
    """A new user's two devices in a new conversation: the first with ``options``, the
    second with the defaults."""
    user = new_user()
    asked, plain = await Client.connect(url), await Client.connect(url)
    await asked.hello(user, options=options)
    await plain.hello(user)
    cid = await asked.create()
    await plain.send(Join(conversation_id=cid))
    await plain.expect(Joined)
    return user, asked, plain, cid
