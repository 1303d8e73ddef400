"""The common Python choice: python-socketio (ASGI, under uvicorn with the same
websockets-sansio implementation as this server). Subscribers join room "r"; ``pub``
emits N messages to the room through the client manager (AsyncRedisManager when
``--redis`` is given, so the relay crosses Redis like this server's replicas)."""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn


def build(redis_url: str | None) -> Any:
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

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis")
    args = parser.parse_args()
    uvicorn.run(
        build(args.redis),
        host="127.0.0.1",
        port=args.port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        log_level="warning",
    )
