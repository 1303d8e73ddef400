"""The ceiling for a Python process: bare ``websockets`` with ``broadcast`` (each frame
encoded once, written to every connection)."""

from __future__ import annotations

import argparse
import asyncio

import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CLIENTS.add(ws)
    try:
        async for message in ws:
            kind, n, size = str(message).split()
            if kind == "pub":
                others = [c for c in CLIENTS if c is not ws]
                payload = "x" * int(size)
                for i in range(int(n)):
                    broadcast(others, payload)
                    if i % 64 == 63:
                        await asyncio.sleep(0)  # let the writes drain, as a relay would
                broadcast(others, "end")
    except websockets.ConnectionClosed:
        pass
    finally:
        CLIENTS.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
