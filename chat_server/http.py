"""Plain HTTP: liveness, readiness and the protocol spec. (REST API: issue 4.)"""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chat_server.session import Runtime
from protocol.schema import SCHEMA_PATH


async def health(request: Request) -> Response:
    """Liveness: the process serves requests."""
    runtime: Runtime = request.app.state.runtime
    return JSONResponse({"status": "ok", "node": runtime.settings.node_id})


async def ready(request: Request) -> Response:
    """Readiness: not draining, the bus is connected and Postgres answers; else 503."""
    runtime: Runtime = request.app.state.runtime
    if runtime.drain.draining:
        return JSONResponse({"status": "draining"}, 503)
    if not runtime.bus.healthy:
        return JSONResponse({"status": "unavailable", "reason": "bus disconnected"}, 503)
    try:
        async with runtime.db() as s:
            await s.execute(text("select 1"))
    except Exception as exc:  # any driver or network error means not ready
        return JSONResponse({"status": "unavailable", "reason": repr(exc)[:200]}, 503)
    return JSONResponse({"status": "ready", "node": runtime.settings.node_id})


async def protocol_schema(request: Request) -> Response:
    return Response(SCHEMA_PATH.read_bytes(), media_type="application/schema+json")
