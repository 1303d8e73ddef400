"""The common Python choice: python-socketio (ASGI, under uvicorn with the same
websockets-sansio implementation as this server). Subscribers join room "r"; ``pub``
emits N messages to the room through the client manager (AsyncRedisManager when
``--redis`` is given, so the relay crosses Redis like this server's replicas).

Token relay (``--gemini URL``, the project's simulator): ``join`` puts a connection in
a room; ``chat`` {room, text} streams a reply through google-genai's
``generate_content_stream`` and emits each chunk's text to the room as ``d``, then
``e`` — the work this server does per token, minus everything else it does."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
import uvicorn


def build(redis_url: str | None, gemini_url: str | None = None) -> Any:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins="*")

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "r")

    @sio.on("pub")  # type: ignore[untyped-decorator]
    async def pub(sid: str, data: str) -> None:
        _, n, size = data.split()
        payload = "x" * int(size)
        for _ in range(int(n)):
            await sio.emit("m", payload, room="r", skip_sid=sid)
        await sio.emit("end", room="r", skip_sid=sid)

    if gemini_url:
        from google import genai
        from google.genai import types

        client = genai.Client(api_key="sim", http_options=types.HttpOptions(base_url=gemini_url))

        streams: set[asyncio.Task[None]] = set()

        @sio.on("join")  # type: ignore[untyped-decorator]
        async def join(sid: str, room: str) -> bool:
            await sio.enter_room(sid, room)
            return True  # the ack, for a client that asked for one

        async def relay(room: str, text: str) -> None:
            stream = await client.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents=text
            )
            async for chunk in stream:
                if chunk.text:
                    await sio.emit("d", chunk.text, room=room)
            await sio.emit("e", room=room)

        @sio.on("chat")  # type: ignore[untyped-decorator]
        async def chat(sid: str, data: dict[str, str]) -> bool:
            # Acked at once (the capacity ramp's send -> ack); the reply streams on.
            task = asyncio.create_task(relay(data["room"], data["text"]))
            streams.add(task)
            task.add_done_callback(streams.discard)
            return True

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis")
    parser.add_argument("--gemini", help="simulator URL: enables the token relay")
    args = parser.parse_args()
    uvicorn.run(
        build(args.redis, args.gemini),
        host="127.0.0.1",
        port=args.port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        log_level="warning",
    )
