"""The WebSocket route: origin check, accept, then receive → decode → Session.dispatch,
until close.

Auth happens in the first frame (``hello``), so no token ever appears in a URL or an
access log. Everything written to the socket goes through the session's writer task.
Errors become what the client sees here, once: a domain ``ChatError`` or a protocol
``ErrorReply`` an ``error`` frame (``retryable`` from ``RETRYABLE``, with
``retry_after_ms``), a code in ``CLOSES`` that close code, anything else ``internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat_server.config import Settings
from chat_server.errors import CLOSES, ChatError
from chat_server.limits import refill
from chat_server.runtime import Drain, Runtime
from chat_server.session import Session, SessionState
from chat_server.wire import error_frame, retry_after_header
from protocol import decode_client
from protocol.errors import CloseCode, Disconnect, ErrorCode, ErrorReply

log = logging.getLogger(__name__)


class _StarletteTransport:
    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def send_text(self, data: str) -> None:
        await self._ws.send_text(data)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    settings = runtime.settings
    # Browsers always send Origin; native and mobile apps send none, and they are not
    # what an origin check protects against (a page on another site using a browser's
    # credentials), so a missing Origin passes; the token still decides.
    origin = websocket.headers.get("origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        # Closing before accept() answers the upgrade with HTTP 403.
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    ip = websocket.client.host if websocket.client else "unknown"
    per_s = settings.handshakes_per_ip_per_s
    wait_ms = await runtime.limiter.take(f"handshakes:{ip}", per_s, per_s * 10)
    if wait_ms:
        runtime.metrics.limit_hit("handshakes")
        await _refuse(websocket, 429, "rate_limited", wait_ms)
        return
    if runtime.drain.draining:
        await websocket.send_denial_response(
            JSONResponse({"error": "draining; connect to another replica"}, status_code=503)
        )
        return
    if 0 < settings.pending_hellos <= runtime.drain.awaiting_hello:
        # A reconnect storm: accepting more would only make every waiting hello later
        # (and time out as 4002, back into the storm). Refused before any work is done;
        # the jittered delay spreads the retries (the clients back off with jitter too).
        runtime.metrics.limit_hit("pending_hellos")
        await _refuse(websocket, 503, "over_capacity", random.randint(1000, 3000))
        return
    await websocket.accept()
    session = Session(runtime, _StarletteTransport(websocket))
    runtime.drain.add(session)
    metrics = runtime.metrics
    metrics.connections_open.inc()
    try:
        await _receive_loop(websocket, session, settings, runtime.drain)
    except Disconnect as exc:
        session.request_close(exc.close_code, exc.reason, flush=True)
    except WebSocketDisconnect:
        pass
    finally:
        await session.cleanup()
        session.request_close(CloseCode.NORMAL, "", flush=True)  # no-op if already closing
        # The writer closes the socket; a client that stopped reading cannot hold us.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.writer.wait_closed(), timeout=5)
        session.writer.abort()
        runtime.drain.remove(session)
        metrics.connections_open.dec()
        code = session.close_code or CloseCode.NORMAL.value
        metrics.connections_closed.labels(metrics.replica, str(code)).inc()


async def _refuse(websocket: WebSocket, status: int, error: str, wait_ms: int) -> None:
    """Answer the upgrade with HTTP ``status`` and when to try again (body and header)."""
    await websocket.send_denial_response(
        JSONResponse(
            {"error": error, "retry_after_ms": wait_ms},
            status_code=status,
            headers={"Retry-After": retry_after_header(wait_ms)},
        )
    )


async def _receive_loop(
    websocket: WebSocket,
    session: Session,
    settings: Settings,
    drain: Drain,
) -> None:
    rate = FrameRate(settings.frames_per_second if settings.limits else None)
    drain.awaiting_hello += 1  # until its hello is handled (or it goes)
    pending = True
    try:
        while not session.writer.closed:
            waiting_hello = session.state is SessionState.AWAITING_HELLO
            if pending and not waiting_hello:
                drain.awaiting_hello -= 1
                pending = False
            # No timer here: Drain.sweep_idle closes a connection silent for too long.
            message = await websocket.receive()
            session.last_frame_at = time.monotonic()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await handle(session, data, rate)
    finally:
        if pending:
            drain.awaiting_hello -= 1


async def handle(session: Session, data: str | bytes, rate: FrameRate) -> None:
    """One client frame: decoded, dispatched, and its error (if any) answered."""
    request_id: str | None = None
    if not await rate.allows(session):
        return
    try:
        message = decode_client(data)
        request_id = getattr(message, "id", None)
        session.metrics.frames_in.inc(str(message.__struct_config__.tag))
        await session.dispatch(message)
    except ChatError as exc:
        if exc.code in CLOSES:
            raise Disconnect(CLOSES[exc.code], exc.message) from None
        session.reply(error_frame(exc.code, exc.message, request_id, exc.retry_after_ms))
    except ErrorReply as exc:
        request_id = exc.request_id or request_id
        session.reply(error_frame(exc.code, exc.message, request_id, exc.retry_after_ms))
    except Disconnect:
        raise
    except Exception:
        log.exception("session %s: frame failed", session.id)
        session.reply(error_frame(ErrorCode.INTERNAL, "internal error", request_id))


class FrameRate:
    """``FRAMES_PER_SECOND`` for one connection (burst twice that). A frame over it is
    answered ``rate_limited`` and not handled; a client that keeps going for another
    burst's worth is closed with 4004 and told when to come back."""

    __slots__ = ("_last_ms", "_per_s", "_refused", "_tokens")

    def __init__(self, per_s: int | None) -> None:
        self._per_s = per_s  # None: unlimited
        # The bucket itself, two numbers (a MemoryLimiter per connection was two dicts).
        self._tokens = 2.0 * per_s if per_s else 0.0
        self._last_ms = time.monotonic() * 1000
        self._refused = 0  # frames refused in a row

    async def allows(self, session: Session) -> bool:
        per_s = self._per_s
        if per_s is None:
            return True
        now_ms = time.monotonic() * 1000
        self._tokens, wait_ms = refill(self._tokens, self._last_ms, now_ms, per_s, 2 * per_s)
        self._last_ms = now_ms
        if not wait_ms:
            self._refused = 0
            return True
        self._refused += 1
        session.metrics.limit_hit("frames")
        if self._refused > 2 * per_s:
            retry_ms = max(wait_ms, 1000)
            raise Disconnect(CloseCode.FLOODING, f"too many frames; retry_after_ms={retry_ms}")
        message = f"more than {per_s} frames a second; slow down"
        session.reply(error_frame(ErrorCode.RATE_LIMITED, message, None, wait_ms))
        return False


__all__ = ["Drain", "websocket_endpoint"]
