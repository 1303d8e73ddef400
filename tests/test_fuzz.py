"""Random sessions against the real server: valid and invalid frames in random order.
Whatever a client sends, it never gets ``internal``, the connection only ends with a
documented close code, and the server logs no error or traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import CLOSE_CODES, CloseCode
from protocol.messages import Error, Pong
from tests.servers import RunningServer
from tests.wsclient import Client, new_user

# Placeholders resolved per run: the session's own conversation, another user's, an
# unknown one, and something that is not an id at all.
CID = st.sampled_from(["$mine", "$other", "$random", "not-a-uuid", 7])
SEQ = st.one_of(st.none(), st.integers(-3, 50), st.integers(2**53 - 2, 2**64 + 1))
TEXT = st.text(max_size=60)
ID = st.one_of(st.text(min_size=1, max_size=12), st.integers(0, 9))


def frame(kind: str, **fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(kind)} | {k: v for k, v in fields.items()})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

FRAMES = st.one_of(
    frame("ping", id=ID),
    frame("hello", token=st.text(max_size=20)),
    frame("join", create=st.fixed_dictionaries({"title": TEXT})),
    frame("join", id=ID, conversation_id=CID, after_seq=SEQ),
    frame("send", id=ID, conversation_id=CID, text=TEXT),
    frame(
        "input", conversation_id=CID, input_id=ID, text=TEXT, final=st.booleans(), heard_chars=SEQ
    ),
    frame("cancel", conversation_id=CID, heard_chars=SEQ),
    frame("history", id=ID, conversation_id=CID, before_seq=SEQ, limit=st.integers(-2, 300)),
    frame("leave", conversation_id=CID),
    frame("typing", conversation_id=CID, active=st.booleans()),
    st.dictionaries(st.sampled_from(["type", "id", "conversation_id", "text", "x"]), JSON),
    st.text(max_size=80),  # anything at all, JSON or not
)


def resolve(value: Any, mine: str, other: str) -> Any:
    if value == "$mine":
        return mine
    if value == "$other":
        return other
    if value == "$random":
        return str(uuid.uuid4())
    if isinstance(value, dict):
        return {k: resolve(v, mine, other) for k, v in value.items()}
    return value


async def run(url: str, program: list[Any], other: str) -> list[Error]:
    """Play ``program`` on one connection; return every error frame received."""
    client = await Client.connect(url)
    await client.hello(new_user())
    mine = str(await client.create())
    errors: list[Error] = []
    try:
        for n, item in enumerate(program):
            raw = item if isinstance(item, str) else json.dumps(resolve(item, mine, other))
            await client.send_raw(raw)
            # A ping after each frame: everything the frame caused arrives before its pong.
            await client.send_raw(json.dumps({"type": "ping", "id": f"sync-{n}"}))
            async with asyncio.timeout(10):
                while True:
                    message = await client.recv()
                    if isinstance(message, Error):
                        errors.append(message)
                    if isinstance(message, Pong) and message.id == f"sync-{n}":
                        break
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else 1006
        assert code in {c.value for c in CLOSE_CODES}, f"undocumented close {code}"
        assert code not in (CloseCode.INTERNAL_ERROR, 1006), f"closed with {code}"
    finally:
        await client.close()
    return errors


@pytest.fixture(scope="module")
def other_conversation(server: RunningServer) -> str:
    async def make() -> str:
        client = await Client.connect(server.ws)
        await client.hello(new_user())
        cid = await client.create()
        await client.close()
        return str(cid)

    return asyncio.run(make())


@settings(
    # FUZZ_EXAMPLES=2000 for a deep run. CI replays the same examples every time (a red
    # CI blocks everyone); a local run explores new ones.
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    derandomize=bool(os.environ.get("CI")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(FRAMES, min_size=1, max_size=12))
def test_random_sessions_never_get_internal_or_a_server_error(
    server: RunningServer,
    other_conversation: str,
    caplog: pytest.LogCaptureFixture,
    program: list[Any],
) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        errors = asyncio.run(run(server.ws, program, other_conversation))
    assert not [e for e in errors if e.code == "internal"], errors
    assert not [e for e in errors if e.code in ("bad_frame", "bad_message") and e.retryable]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not logged, [r.getMessage() for r in logged]
