"""Error codes, close codes and the exceptions that carry them.

This module owns the one table of what can go wrong on the wire. It never does I/O.

Exception tree (each exception knows the frame or close code it becomes)::

    ProtocolError                 root; never raised itself
    ├── ErrorReply(code, msg)     → an ``error`` frame; the connection stays open
    └── Disconnect(close, reason) → the connection is closed with ``close``

Close code ranges (see ``CLOSE_CODES`` for every code):

- 1000-1015  standard WebSocket codes, used with their RFC 6455 meaning.
- 4000-4099  "reconnect and resume": the client should reconnect (after
  ``retry_after`` if one is given) and join again with ``after_seq``.
- 4400-4499  "don't retry": reconnecting with the same credentials or the same
  input fails the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"  # not JSON, not UTF-8, or not a JSON object
    BAD_MESSAGE = "bad_message"  # JSON object that does not match the message schema
    UNKNOWN_TYPE = "unknown_type"  # ``type`` is missing or names no client message
    HELLO_REQUIRED = "hello_required"  # any frame before ``hello``
    ALREADY_HELLO = "already_hello"  # a second ``hello``
    UNAUTHORIZED = "unauthorized"  # token missing, malformed, expired or badly signed
    NOT_FOUND = "not_found"  # conversation/assistant/turn unknown, or not the caller's
    NOT_JOINED = "not_joined"  # the conversation must be joined first
    TEXT_TOO_LONG = "text_too_long"
    NO_ACTIVE_TURN = "no_active_turn"  # ``cancel`` with nothing running
    QUOTA_EXCEEDED = "quota_exceeded"  # the daily token quota is spent (retry_after_ms: reset)
    RATE_LIMITED = (
        "rate_limited"  # over a limit (turns per minute, frames per second): see retry_after_ms
    )
    LLM_RATE_LIMITED = "llm_rate_limited"  # the model provider said 429
    LLM_UNAVAILABLE = "llm_unavailable"  # the model provider failed, stalled or cut the stream
    LLM_REJECTED = "llm_rejected"  # the model provider refused the request (4xx)
    INTERNAL = "internal"  # a bug or an unexpected failure on the server


# Whether repeating the same request later may succeed.
RETRYABLE: dict[ErrorCode, bool] = {
    ErrorCode.BAD_FRAME: False,
    ErrorCode.BAD_MESSAGE: False,
    ErrorCode.UNKNOWN_TYPE: False,
    ErrorCode.HELLO_REQUIRED: False,
    ErrorCode.ALREADY_HELLO: False,
    ErrorCode.UNAUTHORIZED: False,
    ErrorCode.NOT_FOUND: False,
    ErrorCode.NOT_JOINED: False,
    ErrorCode.TEXT_TOO_LONG: False,
    ErrorCode.NO_ACTIVE_TURN: False,
    ErrorCode.RATE_LIMITED: True,
    ErrorCode.QUOTA_EXCEEDED: False,
    ErrorCode.LLM_RATE_LIMITED: True,
    ErrorCode.LLM_UNAVAILABLE: True,
    ErrorCode.LLM_REJECTED: False,
    ErrorCode.INTERNAL: True,
}


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down without a restart planned
    INVALID_PAYLOAD = 1007  # RFC 6455: data inconsistent with the message type (bad UTF-8)
    POLICY_VIOLATION = 1008  # e.g. origin not allowed (before accept this is an HTTP 403)
    MESSAGE_TOO_BIG = 1009  # a frame over ``limits.max_frame_bytes`` (closed by the server)
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # drain finished; reconnect to another replica
    TRY_AGAIN_LATER = 1013  # overloaded; reconnect after a back-off
    SLOW_CONSUMER = 4000  # the client did not read fast enough; resume with after_seq
    IDLE_TIMEOUT = 4001  # nothing received for two heartbeat intervals
    HELLO_TIMEOUT = 4002  # no ``hello`` within the handshake window
    RESUME_REQUIRED = 4003  # events were lost (replica lost its bus); rejoin with after_seq
    FLOODING = (
        4004  # kept sending over the frame rate limit; reconnect after the delay in the reason
    )
    TOO_MANY_CONNECTIONS = 4005  # the user's open sessions are at CONNECTIONS_PER_USER
    UNAUTHORIZED = 4401  # bad token in ``hello``
    PROTOCOL_VIOLATION = 4400  # first frame was not ``hello``, or an unsupported version


@dataclass(frozen=True, slots=True)
class CloseInfo:
    meaning: str
    reconnect: bool


CLOSE_CODES: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo("normal closure", reconnect=False),
    CloseCode.GOING_AWAY: CloseInfo("server going away", reconnect=True),
    CloseCode.INVALID_PAYLOAD: CloseInfo("frame was not valid UTF-8 text", reconnect=False),
    CloseCode.POLICY_VIOLATION: CloseInfo("policy violation", reconnect=False),
    CloseCode.MESSAGE_TOO_BIG: CloseInfo("frame larger than max_frame_bytes", reconnect=True),
    CloseCode.INTERNAL_ERROR: CloseInfo("internal server error", reconnect=True),
    CloseCode.SERVICE_RESTART: CloseInfo("replica restarting; resume elsewhere", reconnect=True),
    CloseCode.TRY_AGAIN_LATER: CloseInfo("overloaded; back off and resume", reconnect=True),
    CloseCode.SLOW_CONSUMER: CloseInfo("slow consumer; resume with after_seq", reconnect=True),
    CloseCode.IDLE_TIMEOUT: CloseInfo("no frame for two heartbeats", reconnect=True),
    CloseCode.HELLO_TIMEOUT: CloseInfo("no hello in time", reconnect=True),
    CloseCode.RESUME_REQUIRED: CloseInfo("events lost; rejoin with after_seq", reconnect=True),
    CloseCode.FLOODING: CloseInfo(
        "too many frames; reconnect after retry_after_ms (in the reason)", reconnect=True
    ),
    CloseCode.TOO_MANY_CONNECTIONS: CloseInfo(
        "too many open connections for this user; reconnect after retry_after_ms (in the reason)",
        reconnect=True,
    ),
    CloseCode.UNAUTHORIZED: CloseInfo("unauthorized; get a new token first", reconnect=False),
    CloseCode.PROTOCOL_VIOLATION: CloseInfo("protocol violation", reconnect=False),
}


def should_reconnect(code: int) -> bool:
    """What a client does with a close code it received, including unknown ones."""
    try:
        return CLOSE_CODES[CloseCode(code)].reconnect
    except ValueError:
        return 4000 <= code < 4100 or code in (1001, 1006, 1011, 1012, 1013)


class ProtocolError(Exception):
    """Root of everything that ends up on the wire as an error."""


class ErrorReply(ProtocolError):
    """Answer the offending frame with an ``error`` frame; keep the connection."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id  # the offending frame's ``id``, when it could be read
        self.retry_after_ms = retry_after_ms


class Disconnect(ProtocolError):
    """Close the connection with ``close_code``; ``reason`` goes into the close frame."""

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        super().__init__(f"{close_code.value}: {reason}")
        self.close_code = close_code
        # RFC 6455 caps the close reason at 123 bytes of UTF-8.
        self.reason = reason.encode()[:123].decode(errors="ignore")
