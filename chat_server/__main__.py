"""``python -m chat_server``: start Postgres if needed, migrate, serve on HOST:PORT.

``python -m chat_server migrate`` only applies the migrations (the one-shot step of a
deployment). Serving migrates too; an advisory lock makes concurrent starts safe.
``python -m chat_server stop-db`` stops the embedded Postgres of DATA_DIR, which is
otherwise left running so the next start is instant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from chat_server.app import create_app, drain, simulator_url
from chat_server.config import ConfigError, Secret, Settings
from chat_server.storage import embedded, migrate

log = logging.getLogger("chat_server")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains (``app.drain``) before shutting down.

    Plain uvicorn closes every WebSocket with 1012 at once; a drain first sends
    ``go_away`` and lets running replies finish.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

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
            await drain(self._app)
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pgserver logs every initdb/pg_ctl line at INFO; alembic each step.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if argv[:1] == ["stop-db"]:
        stopped = embedded.stop((settings.data_dir / "pg").resolve())
        print("embedded Postgres stopped" if stopped else "no embedded Postgres was running")
        return 0
    if settings.database_url is None:
        url, _ = embedded.start((settings.data_dir / "pg").resolve())
        log.info("DATABASE_URL not set: using embedded Postgres in %s", settings.data_dir / "pg")
        settings = dataclasses.replace(settings, database_url=Secret(url))
    assert settings.database_url is not None
    migrate.upgrade(settings.database_url.value)
    if argv[:1] == ["migrate"]:
        log.info("migrations applied")
        return 0
    if argv:
        print(
            f"unknown command {argv[0]!r}; usage: python -m chat_server [migrate]", file=sys.stderr
        )
        return 2
    if settings.uses_simulator:
        where = settings.gemini_base_url or simulator_url(settings)
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
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, app).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
