"""Plain HTTP: the web chat page, liveness, readiness, the protocol spec, metrics."""

from __future__ import annotations

import hmac
import html
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from chat_server.runtime import Runtime
from protocol.schema import SCHEMA_PATH

WEB = Path(__file__).with_name("web")  # the chat page and its vendored libraries
CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js" / "dist"  # the TS client


async def index(request: Request) -> Response:
    """The web chat page (it connects to this server's ``/ws``)."""
    runtime: Runtime = request.app.state.runtime
    scheme = "wss" if request.url.scheme == "https" else "ws"
    ws = f"{scheme}://{request.url.netloc}/ws"
    page = (WEB / "index.html").read_text()
    page = page.replace("{ws}", html.escape(ws)).replace(
        "{node}", html.escape(runtime.settings.node_id)
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


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


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this replica; with ``METRICS_TOKEN`` set, only for a
    ``Authorization: Bearer <token>`` that matches."""
    runtime: Runtime = request.app.state.runtime
    if not runtime.metrics.enabled:
        return JSONResponse({"error": "metrics are off (METRICS=off)"}, 404)
    token = runtime.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token.value}".encode()):
            return JSONResponse({"error": "unauthorized"}, 401)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
