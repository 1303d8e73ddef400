"""Plain HTTP: an index page, liveness, readiness and the protocol spec."""

from __future__ import annotations

import html

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from chat_server.runtime import Runtime
from protocol.schema import SCHEMA_PATH

_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chat-server</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>chat-server</h1>
<p>A real-time chat server for teams of AI assistants. Node <code>{node}</code>.</p>
<ul>
<li><code>{ws}</code>: the WebSocket endpoint (JSON frames; start with <code>hello</code>)</li>
<li><a href="/protocol.json">/protocol.json</a>: the protocol, as JSON Schema</li>
<li><a href="/api/v1/openapi.json">/api/v1/openapi.json</a>: the REST API, as OpenAPI</li>
<li><a href="/health">/health</a> and <a href="/ready">/ready</a>: liveness, readiness</li>
</ul></body></html>
"""


async def index(request: Request) -> Response:
    """What this server is and where its endpoints are (until the web chat page)."""
    runtime: Runtime = request.app.state.runtime
    scheme = "wss" if request.url.scheme == "https" else "ws"
    ws = f"{scheme}://{request.url.netloc}/ws"
    return HTMLResponse(
        _INDEX.format(node=html.escape(runtime.settings.node_id), ws=html.escape(ws))
    )


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
