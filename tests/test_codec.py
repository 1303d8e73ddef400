"""protocol/: round-trips, malformed input (hypothesis), and the checked-in spec."""

from __future__ import annotations

import json
import uuid
from typing import get_args

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, schema
from protocol.errors import (
    CLOSE_CODES,
    RETRYABLE,
    CloseCode,
    ErrorCode,
    ErrorReply,
    should_reconnect,
)
from protocol.messages import (
    ClientMessage,
    ConversationCreate,
    Delta,
    Hello,
    Join,
    Send,
    ServerMessage,
    Usage,
)

CID = uuid.uuid4()


@pytest.mark.parametrize(
    "message",
    [
        Hello(token="t", client="web/1.0"),
        Join(create=ConversationCreate(title="日本語のタイトル")),
        Join(conversation_id=CID, after_seq=41),
        Send(id="c-1", conversation_id=CID, text='こんにちは 👋\n"quoted"'),
    ],
)
def test_client_messages_round_trip(message: ClientMessage) -> None:
    assert codec.decode_client(codec.encode(message)) == message


def test_server_messages_round_trip_and_omit_defaults() -> None:
    delta = Delta(conversation_id=CID, turn_id=CID, offset=3, text="lo")
    data = codec.encode(delta)
    assert codec.decode_server(data) == delta
    assert orjson.loads(data) == {
        "type": "delta",
        "conversation_id": str(CID),
        "turn_id": str(CID),
        "offset": 3,
        "text": "lo",
    }
    assert "retry_after_ms" not in orjson.loads(
        codec.encode(codec.decode_server(b'{"type":"error","code":"x","message":"m"}'))
    )


def test_every_message_type_has_a_unique_tag() -> None:
    for union in (ClientMessage, ServerMessage):
        tags = [t.__struct_config__.tag for t in get_args(union)]
        assert len(tags) == len(set(tags))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_error_reply(data: bytes) -> None:
    try:
        codec.decode_client(data)
    except ErrorReply as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.BAD_MESSAGE, ErrorCode.UNKNOWN_TYPE)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
client_types = st.sampled_from([*sorted(codec.CLIENT_TYPES), "nope", ""])


@settings(max_examples=300, deadline=None)
@given(
    client_types,
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "token",
                "conversation_id",
                "text",
                "after_seq",
                "create",
                "limit",
                "final",
                "input_id",
            ]
        ),
        json_values,
        max_size=5,
    ),
)
def test_random_objects_decode_or_raise_a_coded_error(kind: str, fields: dict) -> None:
    frame = json.dumps({"type": kind, **fields})  # stdlib: allows ints past 64 bits
    try:
        message = codec.decode_client(frame)
    except ErrorReply as exc:
        expected = (
            ErrorCode.UNKNOWN_TYPE if kind not in codec.CLIENT_TYPES else ErrorCode.BAD_MESSAGE
        )
        assert exc.code in (expected, ErrorCode.BAD_FRAME)
        assert exc.message
    else:
        assert message.__struct_config__.tag == kind


def test_usage_defaults_to_zero() -> None:
    assert msgspec.to_builtins(Usage()) == {}


def test_every_error_code_says_whether_to_retry() -> None:
    assert set(RETRYABLE) == set(ErrorCode)


def test_every_close_code_is_documented_and_ranges_hold() -> None:
    assert set(CLOSE_CODES) == set(CloseCode)
    for code, info in CLOSE_CODES.items():
        if 4000 <= code < 4100:
            assert info.reconnect, code
        if 4400 <= code < 4500:
            assert not info.reconnect, code
    assert should_reconnect(4050) is True
    assert should_reconnect(4499) is False
    assert should_reconnect(1006) is True


def test_checked_in_schema_matches_the_types() -> None:
    assert schema.SCHEMA_PATH.read_bytes() == schema.render(), (
        "protocol/schema.json is stale: run `make schema`"
    )


def test_schema_descriptions_do_not_depend_on_docstring_indentation() -> None:
    # msgspec 0.23 strips a docstring's indentation, older versions kept it.
    kept = {"A": {"description": "First line.\n    second line.", "x": [{"description": " y"}]}}
    stripped = {"A": {"description": "First line.\nsecond line.", "x": [{"description": "y"}]}}
    assert schema._clean_descriptions(kept) == schema._clean_descriptions(stripped) == stripped


@pytest.mark.parametrize("kind", [[1], {"a": 1}, 3, None, True])
def test_a_type_that_is_not_a_string_is_unknown_type(kind: object) -> None:
    # Found by tests/test_fuzz.py: a list as `type` raised TypeError (internal).
    with pytest.raises(ErrorReply) as raised:
        codec.decode_client(orjson.dumps({"type": kind, "id": "k"}))
    assert raised.value.code == ErrorCode.UNKNOWN_TYPE
    assert raised.value.request_id == "k"
