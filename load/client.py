"""A protocol client for load runs and tests: one WebSocket, typed frames, timestamps."""

from __future__ import annotations

import asyncio
from typing import Any, Self

import orjson
import websockets

from protocol import decode_server, encode
from protocol.messages import ClientMessage, Hello, Presence, ServerMessage, SessionOptions


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

    async def say_hello(self, token: str, options: SessionOptions | None = None) -> ServerMessage:
        await self.send(Hello(token=token, options=options or SessionOptions()))
        return await self.recv()
