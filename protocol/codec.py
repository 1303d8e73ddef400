"""Bytes in, typed messages out, and back. Sans-I/O: nothing here touches a socket.

Decoding validates against the message structs with msgspec (chosen over pydantic by
``load/bench_codec.py``); encoding uses orjson. Every way a frame can be wrong becomes
an ``ErrorReply`` with a code from ``protocol.errors``, never another exception.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import orjson

from protocol.errors import ErrorCode, ErrorReply
from protocol.messages import ClientMessage, ServerMessage

_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_TOO_DEEP = "frame is nested too deeply"
CLIENT_TYPES = frozenset(t.__struct_config__.tag for t in get_args(ClientMessage))
SERVER_TYPES = frozenset(t.__struct_config__.tag for t in get_args(ServerMessage))


def decode_client(data: str | bytes) -> ClientMessage:
    """Parse one client frame. Raises ``ErrorReply`` (with the frame's ``id`` if any)."""
    try:
        message: ClientMessage = _client_decoder.decode(data)
        return message
    except msgspec.ValidationError as exc:
        raise _explain(data, str(exc), CLIENT_TYPES) from None
    except msgspec.DecodeError as exc:
        raise ErrorReply(ErrorCode.BAD_FRAME, f"frame is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec skips an unknown field's value recursively
        raise ErrorReply(ErrorCode.BAD_FRAME, _TOO_DEEP) from None


def decode_server(data: str | bytes) -> ServerMessage:
    """Parse one server frame (for clients, tests and load/)."""
    try:
        message: ServerMessage = _server_decoder.decode(data)
        return message
    except msgspec.ValidationError as exc:
        raise _explain(data, str(exc), SERVER_TYPES) from None
    except msgspec.DecodeError as exc:
        raise ErrorReply(ErrorCode.BAD_FRAME, f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise ErrorReply(ErrorCode.BAD_FRAME, _TOO_DEEP) from None


def encode(message: ServerMessage | ClientMessage) -> bytes:
    """One JSON frame. Fields equal to their default are omitted."""
    return orjson.dumps(msgspec.to_builtins(message))


def _explain(data: str | bytes, detail: str, known: frozenset[str]) -> ErrorReply:
    # Only on the error path: parse loosely to tell "unknown type" from "bad fields"
    # and to echo the request id back.
    try:
        raw: Any = orjson.loads(data)
    except orjson.JSONDecodeError:  # also orjson's nesting limit (1024)
        return ErrorReply(ErrorCode.BAD_FRAME, "frame is not valid JSON")
    if not isinstance(raw, dict):
        return ErrorReply(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    request_id = raw.get("id")
    request_id = request_id if isinstance(request_id, str) and len(request_id) <= 128 else None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in known:  # a list or object is unhashable
        return ErrorReply(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {kind!r}" if kind is not None else "missing field `type`",
            request_id=request_id,
        )
    return ErrorReply(ErrorCode.BAD_MESSAGE, f"{kind}: {detail}", request_id=request_id)
