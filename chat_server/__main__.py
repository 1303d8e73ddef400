"""``python -m chat_server [COMMAND]``: the command line.

``serve`` (the default) starts the embedded Postgres when ``DATABASE_URL`` is unset,
migrates, and serves on HOST:PORT. ``migrate`` only applies the migrations (the one-shot
step of a deployment; an advisory lock makes concurrent starts safe). ``stop-db`` stops
the embedded Postgres, which is otherwise left running so the next start is instant.
``token SUBJECT`` mints a JWT for ``JWT_SECRET`` mode. ``check-config`` checks every
setting and reaches Postgres and Redis.

A problem with the settings or with reaching Postgres/Redis is one line on stderr that
names the variable, and exit status 2: never a traceback. ``--help`` and a bad command
start nothing.
"""

from __future__ import annotations

import os

# One BLAS thread for the router's embedding model (numpy reads this once, at import):
# a turn's few small matrix products gain little from a second thread, and on a small
# machine that thread takes CPU from the event loop (measured: 3.2 ms of CPU per turn
# with one thread, 4.6 ms with two). An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import dataclasses
import errno
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from chat_server import logs
from chat_server.config import ConfigError, Secret, Settings

log = logging.getLogger("chat_server")

USAGE_EXIT = 2


class StartupError(Exception):
    """One line for the operator (names the variable); ``main`` prints it and exits 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat_server",
        description="Real-time chat server for teams of AI assistants. Settings come from "
        "environment variables (README: Configuration).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="start Postgres if needed, migrate, serve (the default)")
    commands.add_parser("migrate", help="apply the database migrations and exit")
    commands.add_parser("stop-db", help="stop the embedded Postgres of DATA_DIR")
    token = commands.add_parser("token", help="print a JWT for SUBJECT, signed with JWT_SECRET")
    token.add_argument("subject", metavar="SUBJECT", help="the user id (the token's sub)")
    token.add_argument(
        "--ttl", default="24h", help="lifetime: seconds, or a number with s, m, h or d (24h)"
    )
    commands.add_parser(
        "check-config", help="check every setting and reach Postgres and Redis; exit 2 if not"
    )
    quota = commands.add_parser(
        "quota", help="set a user's daily token quota (overrides DAILY_TOKEN_QUOTA)"
    )
    quota.add_argument("subject", metavar="SUBJECT", help="the user id (the token's sub)")
    quota.add_argument(
        "tokens", metavar="TOKENS", help="tokens a day; 0: no quota; 'default': the setting"
    )
    return parser


def _ttl_seconds(value: str) -> int:
    found = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", value)
    if found is None or int(found.group(1)) == 0:
        raise StartupError(f"--ttl={value!r}: must be a positive number of s, m, h or d")
    return int(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]


def _quota(settings: Settings, subject: str, tokens: str) -> str:
    """Set (or clear) a user's daily token quota; the line to print."""
    if tokens == "default":
        value = None
    elif tokens.isdigit():
        value = int(tokens)
    else:
        raise StartupError(f"TOKENS={tokens!r}: must be a number of tokens, 0, or 'default'")
    from chat_server.storage import queries
    from chat_server.storage.db import make_engine, make_sessionmaker

    assert settings.database_url is not None
    url = settings.database_url.value

    async def update() -> bool:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine).begin() as s:
                return await queries.set_quota(s, subject, value)
        finally:
            await engine.dispose()

    if not asyncio.run(update()):
        raise StartupError(f"no user {subject!r} (a user exists after their first hello)")
    shown = "the DAILY_TOKEN_QUOTA setting" if value is None else value or "no quota"
    return f"daily token quota of {subject}: {shown}"


def _token(settings: Settings, subject: str, ttl: str) -> str:
    import jwt

    if settings.jwt_secret is None:
        raise StartupError(
            "JWT_SECRET is not set: the server is in dev mode and takes any token as the "
            "user id; set JWT_SECRET (32+ bytes) to sign tokens"
        )
    if not subject.strip() or len(subject) > 200:
        raise StartupError(f"SUBJECT={subject!r}: must be 1 to 200 characters")
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + _ttl_seconds(ttl)}
    return jwt.encode(claims, settings.jwt_secret.value, algorithm="HS256")


def _check_port(settings: Settings) -> None:
    """Fail before Postgres starts when HOST:PORT cannot be listened on."""
    if settings.port == 0:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(
                f"PORT={settings.port}: cannot listen on {settings.host}:{settings.port} "
                f"({reason}); set PORT or HOST"
            ) from None


def _database(settings: Settings, *, start_embedded: bool) -> Settings:
    """Settings with a reachable DATABASE_URL: the given one, or the embedded Postgres."""
    from chat_server.storage import db, embedded

    if settings.database_url is None:
        if not start_embedded:
            return settings
        where = settings.data_dir / "pg"
        log.info("DATABASE_URL is not set: starting the embedded Postgres in %s", where)
        try:
            url, _ = embedded.start(where.resolve())
        except embedded.Unavailable as exc:
            raise StartupError(f"DATABASE_URL is not set and {exc}") from None
        return dataclasses.replace(settings, database_url=Secret(url))
    url = settings.database_url.value
    _reach(
        "DATABASE_URL",
        f"Postgres at {db.describe_host(url)}",
        lambda attempt_s: db.ping(url, attempt_s),
        settings.startup_wait_s,
        attempt_max_s=5.0,
        give_up=db.permanent_error,  # a bad password or database: waiting will not help
    )
    return settings


def _redis(settings: Settings) -> None:
    from chat_server.app import ping_redis, redis_host

    if settings.redis_url is None:
        return
    url = settings.redis_url.value
    _reach(
        "REDIS_URL",
        f"Redis at {redis_host(url)}",
        lambda attempt_s: ping_redis(url, attempt_s),
        settings.startup_wait_s,
        attempt_max_s=3.0,
    )


def _reach(
    variable: str,
    what: str,
    probe: Callable[[float], Awaitable[None]],
    wait_s: float,
    *,
    attempt_max_s: float,
    give_up: Callable[[Exception], bool] = lambda exc: False,
) -> None:
    """Try ``probe`` until it succeeds or ``wait_s`` passed (a server still starting);
    else one line naming the variable, the host and the last error."""

    async def attempts() -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                await probe(max(0.5, min(attempt_max_s, wait_s)))
                return
            except Exception as exc:  # refused, DNS, auth, TLS: all mean "not usable"
                if time.monotonic() >= deadline or give_up(exc):
                    raise StartupError(
                        f"{variable}: cannot reach {what} within {wait_s:g} s: {_reason(exc)}"
                    ) from None
                await asyncio.sleep(0.5)

    asyncio.run(attempts())


def _reason(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _migrate(settings: Settings) -> None:
    from chat_server.storage import migrate
    from chat_server.storage.db import describe_host

    assert settings.database_url is not None
    log.info("migrating the database")
    try:
        migrate.upgrade(settings.database_url.value)
    except Exception as exc:  # e.g. no pgvector on that server, or no right to create tables
        log.debug("migration failed", exc_info=True)
        where = describe_host(settings.database_url.value)
        raise StartupError(
            f"DATABASE_URL: migrating the database at {where} failed: {_reason(exc)} "
            "(LOG_LEVEL=debug shows the traceback)"
        ) from None


def _check_config(settings: Settings) -> list[str]:
    """Reach everything the server needs: one line per problem, none when all is well."""
    from chat_server.storage import embedded

    problems = []
    # Not the port: a running server holds it, and that is no configuration problem.
    checks: list[Callable[[], object]] = [
        lambda: _database(settings, start_embedded=False),
        lambda: _redis(settings),
    ]
    if settings.database_url is None and not embedded.available():
        problems.append(f"DATABASE_URL is not set and {embedded.UNAVAILABLE}")
    for check in checks:
        try:
            check()
        except StartupError as exc:
            problems.append(str(exc))
    return problems


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains (``app.drain``) before shutting down,
    and the last line of a start is the URL to open.

    Plain uvicorn closes every WebSocket with 1012 at once; a drain first sends
    ``go_away`` and lets running replies finish.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else host
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            url = f"{host}:{port}"
            log.info("serving: open http://%s/ (WebSocket ws://%s/ws)", url, url)

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets)
        log.info("stopped")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            self._captured_signals.append(sig)
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        task = asyncio.ensure_future(self._drain_then_exit())
        task.add_done_callback(lambda _: None)

    async def _drain_then_exit(self) -> None:
        try:
            log.info("SIGTERM: draining (go_away, running replies finish)")
            await self._drain()
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True


def _serve(settings: Settings) -> None:
    # The app (google-genai, SQLAlchemy) loads only to serve: --help and token stay quick.
    from chat_server.app import create_app, drain

    _check_port(settings)
    settings = _database(settings, start_embedded=True)
    _redis(settings)
    _migrate(settings)
    if settings.uses_simulator:
        where = settings.gemini_base_url or "a loopback-only port"
        log.warning(
            "GEMINI_API_KEY is not set: replies come from the built-in Gemini simulator at %s",
            where,
        )
    if settings.jwt_secret is None:
        log.warning("JWT_SECRET is not set: dev mode, any hello.token is taken as the user id")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        # Deflate costs 46-146 KiB per connection (FACTS.md); chat frames are small.
        ws_per_message_deflate=False,
        access_log=False,  # it would print query strings, tokens included
        log_config=None,  # logs.configure has set up every logger
        # uvicorn's INFO lines (process started, startup complete) are chatter.
        log_level="debug" if settings.log_level == "debug" else "warning",
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, lambda: drain(app)).run()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)  # --help and a bad command exit here, having started nothing
    command = args.command or "serve"
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return USAGE_EXIT
    logs.configure(settings.log_level, settings.log_format)
    try:
        if command == "token":
            print(_token(settings, args.subject, args.ttl))
        elif command == "stop-db":
            from chat_server.storage import embedded

            stopped = embedded.stop(Path(settings.data_dir, "pg").resolve())
            print("embedded Postgres stopped" if stopped else "no embedded Postgres was running")
        elif command == "check-config":
            problems = _check_config(settings)
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            if problems:
                return USAGE_EXIT
            print("configuration OK")
        elif command == "quota":
            print(_quota(_database(settings, start_embedded=True), args.subject, args.tokens))
        elif command == "migrate":
            settings = _database(settings, start_embedded=True)
            _migrate(settings)
            log.info("migrations applied")
        else:
            _serve(settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:  # Ctrl+C: uvicorn has shut down cleanly and re-raised it
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
