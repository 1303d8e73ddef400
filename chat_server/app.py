"""``create_app(settings)``: wires every part. Nothing is created at import time.

The database must already be migrated (``python -m chat_server`` does it first).
With ``REDIS_URL`` the bus and the in-flight state live in Redis and replicas share
every conversation; without it, one node runs with in-memory backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import mimetypes
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from chat_server import api, http
from chat_server.bus import Bus
from chat_server.bus.memory import MemoryBus
from chat_server.config import Settings
from chat_server.inflight import Inflight
from chat_server.inflight.memory import MemoryInflight
from chat_server.limits import Limiter, MemoryLimiter
from chat_server.llm.gemini import GeminiEmbedder, GeminiProvider
from chat_server.llm.simulator import LoopbackSimulator, SimConfig
from chat_server.presence import PRESENCE_REFRESH_S, PresenceStore
from chat_server.presence.memory import MemoryPresence
from chat_server.router.embedding import DIM, Embedder, HashingEmbedder
from chat_server.router.encoder import SentenceEncoder
from chat_server.router.learning import reembed
from chat_server.runtime import Runtime
from chat_server.storage.db import make_engine, make_sessionmaker
from chat_server.ws import websocket_endpoint

log = logging.getLogger("chat_server")


def _redis_client(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, health_check_interval=5, socket_connect_timeout=2)


def redis_host(url: str) -> str:
    """Where a redis:// (or unix://) URL points, for a message (no password)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


async def ping_redis(url: str, timeout_s: float) -> None:
    """PING Redis once with a client of its own; raise whatever the client raised."""
    client = _redis_client(url)
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _backends(
    settings: Settings,
) -> AsyncIterator[tuple[Bus, Inflight, PresenceStore, Limiter]]:
    if settings.redis_url is None:
        yield MemoryBus(), MemoryInflight(), MemoryPresence(), MemoryLimiter()
        return
    from chat_server.bus.redis import RedisBus
    from chat_server.inflight.redis import RedisInflight
    from chat_server.limits.redis import RedisLimiter
    from chat_server.presence.redis import RedisPresence

    client = _redis_client(settings.redis_url.value)
    try:
        yield (
            RedisBus(client),
            RedisInflight(client, lease_ms=settings.lease_ms),
            RedisPresence(client),
            RedisLimiter(client),
        )
    finally:
        await client.aclose()


async def _refresh_presence(runtime: Runtime) -> None:
    """Keep this replica's presence entries and held connection places alive (both
    expire on their own when a replica dies). One period serves both."""
    while True:
        await asyncio.sleep(PRESENCE_REFRESH_S)
        sessions = tuple(runtime.drain.sessions)
        entries = [
            (conversation_id, session.device)
            for session in sessions
            for conversation_id in session.joined.conversations()
        ]
        try:
            await runtime.presence.store.refresh(entries)
        except Exception:  # Redis away: entries live on until their TTL
            log.warning("presence refresh failed", exc_info=True)
        await runtime.limiter.renew((s.holds, s.id) for s in sessions if s.holds is not None)


async def drain(app: Starlette) -> None:
    """The graceful part of a shutdown; ``__main__`` runs it on the first SIGTERM."""
    runtime: Runtime = app.state.runtime
    await runtime.drain.run(runtime.turns, runtime.settings.drain_timeout_s)


def create_app(settings: Settings) -> Starlette:
    mimetypes.add_type("text/javascript", ".mjs")  # browsers load modules by MIME type
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (start the embedded one first)")
    database_url = settings.database_url.value
    built_in_simulator = settings.uses_simulator and settings.gemini_base_url is None
    api_key = settings.gemini_api_key.value if settings.gemini_api_key else "simulator"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        simulator = None
        base_url = settings.gemini_base_url
        if built_in_simulator:
            sim = SimConfig(
                ttft_s=settings.sim_ttft_ms / 1000, tokens_per_s=settings.sim_tokens_per_s
            )
            simulator = LoopbackSimulator(sim)
            base_url = await asyncio.to_thread(simulator.start)
            app.state.simulator_url = base_url
        engine = make_engine(database_url)
        db = make_sessionmaker(engine)
        async with contextlib.AsyncExitStack() as stack:
            if simulator is not None:
                stack.push_async_callback(asyncio.to_thread, simulator.stop)
            backends = await stack.enter_async_context(_backends(settings))
            bus, inflight, presence, limiter = backends
            await bus.start()
            llm = GeminiProvider(
                api_key=api_key, base_url=base_url, attempts=settings.gemini_attempts
            )
            embedder: Embedder
            if settings.embedder == "gemini":
                embedder = GeminiEmbedder(
                    api_key=api_key, base_url=base_url, model=settings.gemini_embed_model, dim=DIM
                )
            elif settings.embedder == "use":
                embedder = SentenceEncoder()
            else:
                embedder = HashingEmbedder()
            runtime = Runtime.wire(
                settings,
                db=db,
                bus=bus,
                inflight=inflight,
                presence=presence,
                llm=llm,
                embedder=embedder,
                limiter=limiter,
            )
            turns = runtime.turns
            runtime.metrics.watch(
                runtime.metrics.db_in_use,
                lambda: engine.pool.checkedout(),  # type: ignore[attr-defined]
            )
            app.state.runtime = runtime
            try:  # loads the model now, off the event loop, instead of on the first turn
                await runtime.turns.matcher.warm()
            except Exception:  # Gemini away: calibration is retried on the first turns
                log.warning("could not prepare the router's calibration", exc_info=True)
            embedded = await reembed(db, embedder)
            if embedded:
                log.info("re-embedded %d skills and examples with %s", embedded, embedder.name)
            ended = await turns.sweep()
            if ended:
                log.warning("ended %d replies whose replica is gone", ended)
            background = [
                asyncio.create_task(turns.run(), name="turns-liveness"),
                asyncio.create_task(_refresh_presence(runtime), name="presence-refresh"),
                asyncio.create_task(
                    runtime.drain.sweep_idle(
                        settings.hello_timeout_s, 2 * settings.heartbeat_ms / 1000
                    ),
                    name="idle-sweep",
                ),
            ]
            # Everything loaded so far (libraries, the model, the wiring) lives as long as
            # the process: out of the collector's sight, a full collection scans only what
            # serving made. Measured: a full collection of the loaded server's ~155k
            # objects took ~100 ms, a stall of every connection, longer than the whole
            # service level of an ack.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                await turns.shutdown()
                await runtime.presence.aclose()
                await llm.aclose()
                await embedder.aclose()
                await bus.aclose()
                await engine.dispose()

    routes: list[Route | WebSocketRoute | Mount] = [
        Route("/", http.index),
        # The page's files, compressed for browsers that accept it (43 KB of JavaScript).
        Mount("/web", GZipMiddleware(StaticFiles(directory=http.WEB)), name="web"),
        Mount(
            "/client",
            GZipMiddleware(StaticFiles(directory=http.CLIENT, check_dir=False)),
            name="client",
        ),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/health", http.health),
        Route("/metrics", http.metrics),
        Route("/ready", http.ready),
        Route("/protocol.json", http.protocol_schema),
        *api.routes(),
    ]
    middleware = []
    if settings.allowed_origins:
        # Browser apps on these origins may call the REST API (bearer tokens, no cookies).
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
