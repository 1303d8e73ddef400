"""The Redis bus (redis-py asyncio pub/sub): fan-out between replicas.

One pub/sub connection per replica, read by one task. ``subscribe`` returns only once
Redis has confirmed the subscription, so anything published afterwards is delivered:
callers read Postgres/shared state *after* subscribing and miss nothing in between.
When the connection drops, the reader reconnects with back-off, subscribes to every
channel again and then calls the ``on_reconnect`` callbacks so the hub can repair
what was published while it was away (pub/sub is at-most-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chat_server.bus import Handler

log = logging.getLogger(__name__)

_KEEPALIVE = "bus:keepalive"  # always subscribed, so the reader has a channel to wait on
_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class RedisBus:
    def __init__(self, client: aioredis.Redis, *, subscribe_timeout_s: float = 5.0) -> None:
        self._redis = client
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        self._connected = asyncio.Event()
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._timeout = subscribe_timeout_s
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def healthy(self) -> bool:
        return self._connected.is_set()

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="redis-bus-reader")
        async with asyncio.timeout(self._timeout):
            await self._connected.wait()

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            await self._redis.publish(channel, payload)
        except (RedisError, OSError) as exc:
            # At-most-once: subscribers repair the gap from Postgres/shared state.
            log.warning("publish to %s lost: %r", channel, exc)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler
        if not self._connected.is_set():
            return  # the reader subscribes to every handler's channel when it connects
        done = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(done)
        try:
            await self._pubsub.subscribe(channel)
            async with asyncio.timeout(self._timeout):
                await done
        except (RedisError, OSError, TimeoutError) as exc:
            # The reader reconnects and resubscribes; the caller's repair covers the gap.
            log.warning("subscribe to %s not confirmed: %r", channel, exc)
        finally:
            waiting = self._pending.get(channel, [])
            if done in waiting:
                waiting.remove(done)

    async def unsubscribe(self, channel: str) -> None:
        if self._handlers.pop(channel, None) is not None and self._connected.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._handlers.clear()

    async def _read_forever(self) -> None:
        attempt = 0
        first = True
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(_KEEPALIVE, *self._handlers)
                self._pubsub = pubsub
                self._connected.set()
                attempt = 0
                if not first:
                    log.warning(
                        "redis bus reconnected; resubscribed %d channels", len(self._handlers)
                    )
                    for callback in self._reconnect_callbacks:
                        callback()
                first = False
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("redis bus connection lost: %r", exc)
                self._connected.clear()
                for futures in self._pending.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(ConnectionError("redis bus disconnected"))
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                attempt += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "message":
                handler = self._handlers.get(channel)
                if handler is not None:
                    try:
                        handler(message["data"])
                    except Exception:
                        log.exception("bus handler for %s failed", channel)
            elif message["type"] == "subscribe":
                for future in self._pending.pop(channel, []):
                    if not future.done():
                        future.set_result(None)
