"""Shared fixtures: real Postgres (+pgvector), the Gemini simulator, real servers.

Postgres is the embedded one (pgserver, in a temporary folder) unless
``TEST_DATABASE_URL`` names a server; migrations run once per test session.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from chat_server.app import create_app
from chat_server.config import Secret, Settings
from chat_server.llm.simulator import SimConfig, create_simulator
from chat_server.storage import embedded, migrate
from chat_server.storage.db import async_url
from load.spawn import EmbeddedRedis
from tests.replicas import Replica, start_replicas, stop_replicas
from tests.servers import RunningServer, serve


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        migrate.upgrade(url)
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="chat-test-pg-") as tmp:
        url, server = embedded.start(Path(tmp) / "pg", keep_running=False)
        try:
            migrate.upgrade(url)
            yield url
        finally:
            server.cleanup()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
def db(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def simulator() -> Iterator[RunningServer]:
    """A fast simulator: 20 ms to first token, 400 tokens/s, 40-token replies, one token
    per chunk (the worst case, and what tests of token-by-token delivery need)."""
    running = serve(create_simulator(SimConfig(ttft_s=0.02, tokens_per_s=400, chunk_tokens=1)))
    yield running
    running.stop()


@pytest.fixture
def sim_requests(simulator: RunningServer) -> Callable[[], list[dict[str, Any]]]:
    """What the simulator received, newest last (cleared at the start of the test)."""
    httpx.delete(f"{simulator.http}/_sim/requests")
    return lambda: list(httpx.get(f"{simulator.http}/_sim/requests").json())


@pytest.fixture(scope="session")
def base_settings(database_url: str, simulator: RunningServer) -> Settings:
    return Settings(
        database_url=Secret(database_url),
        gemini_base_url=simulator.http,
        gemini_attempts=1,
        node_id="test-node",
        llm_stall_s=5.0,
    )


@pytest.fixture
def start_server(base_settings: Settings) -> Iterator[Callable[..., RunningServer]]:
    """Start a server with some settings changed: ``start_server(outbox_frames=8)``."""
    started: list[RunningServer] = []

    def start(**changes: Any) -> RunningServer:
        settings = dataclasses.replace(base_settings, **changes)
        port = settings.port if "port" in changes else None
        running = serve(create_app(settings), port=port, max_size=settings.max_frame_bytes)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def server(base_settings: Settings) -> Iterator[RunningServer]:
    """The shared default server; tests isolate themselves with fresh user ids."""
    running = serve(create_app(base_settings), max_size=base_settings.max_frame_bytes)
    yield running
    running.stop()


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server of this test's own, so a test may stop and restart it."""
    redis = EmbeddedRedis()
    yield redis
    redis.stop()


@pytest.fixture
def replicas(
    database_url: str, simulator: RunningServer, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[Callable[..., list[Replica]]]:
    """``replicas(2)`` starts two server processes sharing Redis and Postgres."""
    started: list[Replica] = []

    def start(count: int = 2, **env: str) -> list[Replica]:
        defaults = {
            "DATABASE_URL": database_url,
            "REDIS_URL": os.environ.get("TEST_REDIS_URL") or redis_server.url,
            "GEMINI_BASE_URL": simulator.http,
            "GEMINI_ATTEMPTS": "1",
            "LEASE_MS": "1000",
            "DRAIN_TIMEOUT_S": "20",
        }
        new = start_replicas(count, tmp_path, **(defaults | env))
        started.extend(new)
        return new

    yield start
    stop_replicas(started)
