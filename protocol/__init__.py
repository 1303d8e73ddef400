"""The chat wire protocol v1: typed messages, codec, error and close codes. Pure data.

Clients, tests and ``load/`` import this package; it never imports ``chat_server``.
"""

from protocol.codec import decode_client, decode_server, encode
from protocol.errors import (
    CLOSE_CODES,
    CloseCode,
    Disconnect,
    ErrorCode,
    ErrorReply,
    ProtocolError,
    should_reconnect,
)
from protocol.messages import PROTOCOL_VERSION, ClientMessage, ServerMessage

__all__ = [
    "CLOSE_CODES",
    "PROTOCOL_VERSION",
    "ClientMessage",
    "CloseCode",
    "Disconnect",
    "ErrorCode",
    "ErrorReply",
    "ProtocolError",
    "ServerMessage",
    "decode_client",
    "decode_server",
    "encode",
    "should_reconnect",
]
