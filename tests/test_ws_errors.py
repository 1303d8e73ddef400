"""Bad input and hostile clients: each gets a clear error frame or a documented close
code, the connection survives where it can, and nothing stored is touched."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import jwt
import pytest
import websockets
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.config import Secret
from chat_server.storage.models import Message as MessageRow
from protocol.errors import CloseCode
from protocol.messages import Ack, Error, Hello, Join, Ping, Pong, Send, TurnEnd, Welcome
from tests.servers import RunningServer
from tests.wsclient import Client, new_user

pytestmark = pytest.mark.asyncio


async def ready_client(server: RunningServer) -> tuple[Client, uuid.UUID]:
    client = await Client.connect(server.ws)
    await client.hello(new_user())
    return client, await client.create()


async def still_alive(client: Client) -> None:
    await client.send(Ping(id="alive?"))
    assert await client.expect(Pong) == Pong(id="alive?")


def seq_frame(kind: str, request_id: str, **fields: int) -> str:
    """A frame of ``kind`` for a random conversation, with big integers kept exact."""
    body = {"type": kind, "id": request_id, "conversation_id": str(uuid.uuid4()), **fields}
    return json.dumps(body)  # the stdlib writes integers of any size


@pytest.mark.parametrize(
    ("frame", "code", "echoed_id"),
    [
        ("{not json", "bad_frame", None),
        ("[1, 2, 3]", "bad_frame", None),
        ("[" * 60_000, "bad_frame", None),
        ('"just a string"', "bad_frame", None),
        ('{"type": "teleport", "id": "t1"}', "unknown_type", "t1"),
        ('{"id": "t2"}', "unknown_type", "t2"),
        ('{"type": "send", "id": "t3", "text": "hi"}', "bad_message", "t3"),
        (
            '{"type": "send", "id": "t4", "conversation_id": "nope", "text": "x"}',
            "bad_message",
            "t4",
        ),
        ('{"type": "history", "id": "t5", "conversation_id": 5}', "bad_message", "t5"),
        ('{"type": "ping", "id": 17}', "bad_message", None),
        (
            '{"type": "send", "id": "t6", "conversation_id": "'
            + str(uuid.uuid4())
            + '", "text": "nul\\u0000"}',
            "bad_message",
            "t6",
        ),
        (
            '{"type": "send", "id": "t7", "conversation_id": "'
            + str(uuid.uuid4())
            + '", "text": "\\ud800"}',
            "bad_frame",
            None,
        ),
        # A depth bomb in a field msgspec skips: a RecursionError before, `internal`.
        ('{"type": "ping", "x": ' + "[" * 30_000 + "]" * 30_000 + "}", "bad_frame", None),
        # Sequence numbers beyond 2**53 - 1: asyncpg's int64 overflow before, `internal`.
        (seq_frame("join", "t8", after_seq=2**63), "bad_message", "t8"),
        (seq_frame("history", "t9", before_seq=2**64), "bad_message", "t9"),
        (seq_frame("cancel", "t10", heard_chars=2**53), "bad_message", "t10"),
    ],
)
async def test_malformed_frames_get_an_error_and_the_connection_survives(
    server: RunningServer, frame: str, code: str, echoed_id: str | None
) -> None:
    client, _ = await ready_client(server)
    await client.send_raw(frame)
    error = await client.expect(Error)
    assert error.code == code
    assert error.id == echoed_id
    assert error.retryable is False
    assert error.message
    await still_alive(client)
    await client.close()


async def test_binary_garbage_gets_an_error_frame(server: RunningServer) -> None:
    client, _ = await ready_client(server)
    await client.send_raw(b"\xff\xfe\x00garbage")
    assert (await client.expect(Error)).code == "bad_frame"
    await still_alive(client)
    await client.close()


async def test_oversized_frame_closes_with_1009(server: RunningServer) -> None:
    client, _ = await ready_client(server)
    await client.send_raw("x" * (64 * 1024 + 1))
    assert await client.closed_with() == CloseCode.MESSAGE_TOO_BIG


async def test_text_over_the_limit_is_refused_and_not_stored(
    start_server: Callable[..., RunningServer], db: async_sessionmaker[AsyncSession]
) -> None:
    server = start_server(max_text_chars=100)
    client, cid = await ready_client(server)
    await client.send(Send(id="long", conversation_id=cid, text="a" * 101))
    error = await client.expect(Error)
    assert (error.id, error.code) == ("long", "text_too_long")
    assert "100" in error.message
    await client.send(Send(id="blank", conversation_id=cid, text="   "))
    assert (await client.expect(Error)).code == "bad_message"
    async with db() as s:
        count = await s.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.conversation_id == cid)
        )
    assert count == 0
    await still_alive(client)
    await client.close()


async def test_someone_elses_conversation_is_not_found_and_untouched(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    owner, cid = await ready_client(server)
    await owner.send(Send(id="mine", conversation_id=cid, text="private"))
    await owner.until(TurnEnd)

    intruder, _ = await ready_client(server)
    await intruder.send(Join(id="j", conversation_id=cid, after_seq=0))
    error = await intruder.expect(Error)
    assert (error.id, error.code) == ("j", "not_found")
    await intruder.send(Send(id="s", conversation_id=cid, text="let me in"))
    assert (await intruder.expect(Error)).code == "not_joined"
    from protocol.messages import History

    await intruder.send(History(id="h", conversation_id=cid))
    assert (await intruder.expect(Error)).code == "not_found"
    async with db() as s:
        texts = list(
            await s.scalars(select(MessageRow.text).where(MessageRow.conversation_id == cid))
        )
    assert len(texts) == 2
    assert "let me in" not in texts
    await owner.send(Send(id="more", conversation_id=cid, text="still private"))
    await owner.until(TurnEnd)
    await still_alive(intruder)  # the next frame is its pong: nothing of cid leaked
    assert [p for p in intruder.presence if p.conversation_id == cid] == []
    await owner.close()
    await intruder.close()


async def test_unknown_assistant_is_not_found(server: RunningServer) -> None:
    client, cid = await ready_client(server)
    await client.send(Send(id="a", conversation_id=cid, text="hi", assistant_id=uuid.uuid4()))
    error = await client.expect(Error)
    assert (error.id, error.code) == ("a", "not_found")
    await still_alive(client)
    await client.close()


async def test_frames_before_hello_are_refused(server: RunningServer) -> None:
    client = await Client.connect(server.ws)
    await client.send(Ping(id="early"))
    error = await client.expect(Error)
    assert (error.id, error.code) == ("early", "hello_required")
    await client.hello(new_user())
    await client.send(Hello(id="again", token="x"))
    assert (await client.expect(Error)).code == "already_hello"
    await client.close()


async def test_unsupported_protocol_version_closes_with_4400(server: RunningServer) -> None:
    client = await Client.connect(server.ws)
    await client.send(Hello(token="u", protocol=2))
    assert await client.closed_with() == CloseCode.PROTOCOL_VIOLATION


async def test_hello_timeout_closes_with_4002(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(hello_timeout_s=0.3)
    client = await Client.connect(server.ws)
    assert await client.closed_with() == CloseCode.HELLO_TIMEOUT


async def test_silent_client_is_closed_after_two_heartbeats(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(heartbeat_ms=200)
    client = await Client.connect(server.ws)
    welcome = await client.hello(new_user())
    assert welcome.heartbeat_ms == 200
    started = time.monotonic()
    assert await client.closed_with() == CloseCode.IDLE_TIMEOUT
    assert time.monotonic() - started >= 0.35


# ------------------------------------------------------------------ auth


SECRET = "test-secret-0123456789abcdef-0123456789"


def token(secret: str, sub: str, exp_in: float = 60) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in)}, secret, algorithm="HS256")


async def test_jwt_subject_becomes_the_user(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(jwt_secret=Secret(SECRET))
    client = await Client.connect(server.ws)
    await client.send(Hello(token=token(SECRET, "alice-jwt")))
    welcome = await client.expect(Welcome)
    assert welcome.user_id == "alice-jwt"
    cid = await client.create()
    await client.send(Send(id="1", conversation_id=cid, text="hi"))
    assert (await client.expect(Ack)).seq == 1
    await client.close()


@pytest.mark.parametrize(
    "bad_token",
    [
        None,
        "not-a-jwt",
        token("w" * 40, "mallory"),
        token(SECRET, "late", exp_in=-120),
        jwt.encode({"sub": "no-exp"}, SECRET, algorithm="HS256"),
    ],
)
async def test_bad_tokens_close_with_4401(
    start_server: Callable[..., RunningServer], bad_token: str | None
) -> None:
    server = start_server(jwt_secret=Secret(SECRET))
    client = await Client.connect(server.ws)
    await client.send(Hello(token=bad_token))
    assert await client.closed_with() == CloseCode.UNAUTHORIZED


async def test_disallowed_origin_is_refused_with_http_403(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(allowed_origins=("https://app.example",))
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(server.ws, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    client = await Client.connect(server.ws, origin="https://app.example")
    await client.hello(new_user())
    await client.close()


async def test_a_client_without_origin_passes_the_origin_check(
    start_server: Callable[..., RunningServer],
) -> None:
    # Native and mobile apps send no Origin; only browsers do, and they always do.
    server = start_server(allowed_origins=("https://app.example",))
    client = await Client.connect(server.ws)
    await client.hello(new_user())
    await still_alive(client)
    await client.close()
