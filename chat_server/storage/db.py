"""Engine creation. Only this package's modules touch SQLAlchemy engines."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``postgres://`` URLs and use asyncpg for them."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


PING_IDLE_S = 10.0


def make_engine(url: str, *, pool_size: int = 10, ping_idle_s: float = PING_IDLE_S) -> AsyncEngine:
    """A pooled asyncpg engine that checks a connection before use only when it sat idle.

    SQLAlchemy's ``pool_pre_ping`` checks every checkout, and for asyncpg a check is
    three round trips (BEGIN, an empty query, ROLLBACK): it nearly doubled the round
    trips of a join's transaction, and under load each round trip waits a turn of the
    busy event loop. A connection idle for more than ``ping_idle_s`` is still checked
    (and replaced if Postgres dropped it: restart, failover, idle timeout). One used
    within that time that Postgres dropped fails its transaction once; the error marks
    the pool's older connections invalid, so the next transaction gets a fresh one.
    """
    engine = create_async_engine(async_url(url), pool_size=pool_size, max_overflow=pool_size)
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _idle_from(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _check_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= ping_idle_s:
            return
        try:
            dbapi_connection.ping()  # what pool_pre_ping runs; we are inside its greenlet
        except Exception as exc:
            raise DisconnectionError("connection dropped while idle") from exc  # pool retries

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def describe_host(url: str) -> str:
    """Where a postgresql:// URL points, for a message (no user, no password)."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if not parts.hostname and socket_dir:
        return f"the socket in {socket_dir}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


async def ping(url: str, timeout_s: float) -> None:
    """Connect and run ``select 1`` once; raise whatever the driver raised."""
    import asyncpg

    dsn = async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        await connection.fetchval("select 1")
    finally:
        await connection.close()


def permanent_error(exc: Exception) -> bool:
    """Errors that waiting will not fix: bad password, unknown database or role."""
    import asyncpg

    return isinstance(
        exc,
        asyncpg.InvalidPasswordError
        | asyncpg.InvalidAuthorizationSpecificationError
        | asyncpg.InvalidCatalogNameError,
    )
