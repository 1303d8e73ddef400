"""``python -m chat_server``: start Postgres if needed, migrate, serve on HOST:PORT.

``python -m chat_server migrate`` only applies the migrations (the one-shot step of a
deployment). Serving migrates too; an advisory lock makes concurrent starts safe.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import uvicorn

from chat_server.app import create_app, simulator_url
from chat_server.config import ConfigError, Secret, Settings
from chat_server.storage import embedded, migrate

log = logging.getLogger("chat_server")


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
    uvicorn.run(
        create_app(settings),
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
