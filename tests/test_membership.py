"""Joining and leaving: the hub, the feeds and presence stay in step, a failed join
leaves nothing behind, and a connection holds a bounded number of conversations.
A real Postgres; memory bus, in-flight state and presence."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.bus.memory import MemoryBus
from chat_server.config import Settings
from chat_server.errors import ChatError
from chat_server.inflight.memory import MemoryInflight
from chat_server.llm.gemini import GeminiProvider
from chat_server.membership import MAX_JOINED
from chat_server.presence.memory import MemoryPresence
from chat_server.router.embedding import HashingEmbedder
from chat_server.runtime import Runtime
from chat_server.session import Session, SessionState
from chat_server.storage import queries
from protocol import decode_server
from protocol.errors import ErrorCode, ErrorReply
from protocol.messages import ConversationCreate, Join

pytestmark = pytest.mark.asyncio


class Recorder:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    async def send_text(self, data: str) -> None:
        self.frames.append(decode_server(data))

    async def close(self, code: int, reason: str) -> None:
        pass


async def user_session(
    db: async_sessionmaker[AsyncSession], presence: MemoryPresence
) -> tuple[Session, Runtime]:
    """A session past hello, of a new user, on a runtime wired as the app wires it."""
    runtime = Runtime.wire(
        Settings(),
        db=db,
        bus=MemoryBus(),
        inflight=MemoryInflight(),
        presence=presence,
        llm=GeminiProvider(api_key="unused", base_url="http://127.0.0.1:9", attempts=1),
        embedder=HashingEmbedder(),
    )
    session = Session(runtime, Recorder())
    session.subject = f"m-{uuid.uuid4()}"
    async with db.begin() as s:
        session.user_id = (await queries.ensure_user(s, session.subject, default_model="m")).id
    session.state = SessionState.READY
    return session, runtime


async def test_a_join_that_fails_leaves_no_feed_subscription_or_presence(
    db: async_sessionmaker[AsyncSession],
) -> None:
    presence = MemoryPresence()
    owner, _ = await user_session(db, presence)
    intruder, runtime = await user_session(db, presence)
    assert owner.user_id is not None
    assert intruder.user_id is not None
    await owner.joined.join(Join(id="mine", create=ConversationCreate()), owner.user_id)
    (cid,) = owner.joined.conversations()

    with pytest.raises(ChatError) as refused:
        await intruder.joined.join(Join(id="theirs", conversation_id=cid), intruder.user_id)
    assert refused.value.code is ErrorCode.NOT_FOUND
    assert cid not in intruder.joined
    assert intruder.joined.conversations() == []
    assert cid not in runtime.hub._local, "the hub let go of the channel again"
    assert await presence.members(cid) == [owner.device], "only the owner is present"


async def test_a_leave_undoes_the_join_and_a_repeated_join_starts_over(
    db: async_sessionmaker[AsyncSession],
) -> None:
    presence = MemoryPresence()
    session, runtime = await user_session(db, presence)
    assert session.user_id is not None
    await session.joined.join(Join(id="a", create=ConversationCreate()), session.user_id)
    (cid,) = session.joined.conversations()
    await session.joined.join(Join(id="b", conversation_id=cid), session.user_id)
    assert session.joined.conversations() == [cid]
    assert runtime.hub._local[cid] == {session}
    assert await presence.members(cid) == [session.device]

    await session.joined.leave(cid)
    assert cid not in session.joined
    assert cid not in runtime.hub._local
    assert await presence.members(cid) == []


async def test_a_connection_holds_at_most_max_joined_conversations(
    db: async_sessionmaker[AsyncSession],
) -> None:
    session, _ = await user_session(db, MemoryPresence())
    assert session.user_id is not None
    for i in range(MAX_JOINED):
        await session.joined.join(Join(id=str(i), create=ConversationCreate()), session.user_id)
    with pytest.raises(ErrorReply) as refused:
        await session.joined.join(Join(id="one more", create=ConversationCreate()), session.user_id)
    assert refused.value.code is ErrorCode.BAD_MESSAGE
    async with db.begin() as s:
        mine = await queries.list_conversations(s, session.user_id, limit=100, before=None)
    assert len(mine) == MAX_JOINED, "the refused join created nothing"
    held = session.joined.conversations()[0]
    await session.joined.join(Join(id="again", conversation_id=held), session.user_id)
    assert len(session.joined.conversations()) == MAX_JOINED, "a rejoin of a held one is fine"
