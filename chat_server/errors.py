"""The domain's one error root: ``ChatError``, carrying the wire code it becomes.

Domain code (auth, router, turns, conversation use cases) raises ``ChatError``; it never
raises a wire exception. The mapping happens once per edge:

- WebSocket (``ws.handle``): an ``error`` frame with ``retryable`` from
  ``protocol.errors.RETRYABLE`` and ``retry_after_ms``, or, for the codes in
  ``CLOSES``, the connection closes with that code (a bad token: 4401, don't retry);
- REST (``api``): the HTTP status in ``HTTP_STATUS``, the code as the body's ``error``.

Protocol-level faults of a frame (not JSON, no ``hello`` first) are the protocol's own
``ErrorReply``, raised by ``protocol`` and ``session`` only, and answered in ``ws`` the same way.
"""

from __future__ import annotations

from protocol.errors import CloseCode, ErrorCode


class ChatError(Exception):
    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


# Over WebSocket these end the connection instead of answering one frame.
CLOSES: dict[ErrorCode, CloseCode] = {ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED}

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.BAD_MESSAGE: 422,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.HELLO_REQUIRED: 400,
    ErrorCode.ALREADY_HELLO: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_JOINED: 409,
    ErrorCode.TEXT_TOO_LONG: 422,
    ErrorCode.NO_ACTIVE_TURN: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.LLM_RATE_LIMITED: 429,
    ErrorCode.LLM_UNAVAILABLE: 503,
    ErrorCode.LLM_REJECTED: 502,
    ErrorCode.INTERNAL: 500,
}
