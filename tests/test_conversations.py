"""conversations.py: the use cases WebSocket and REST share, against real Postgres."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import conversations
from chat_server.errors import ChatError
from chat_server.storage import queries, teams
from protocol.errors import ErrorCode
from tests.wsclient import new_user

pytestmark = pytest.mark.asyncio


async def two_users(s: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
    alice = await queries.ensure_user(s, new_user(), default_model="m")
    bob = await queries.ensure_user(s, new_user(), default_model="m")
    return alice.id, bob.id


async def test_another_users_conversation_is_not_found_like_an_unknown_one(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async with db.begin() as s:
        alice, bob = await two_users(s)
        mine = await conversations.create(s, alice, title="t", assistant_id=None)
        assert (await conversations.owned(s, alice, mine.id)).id == mine.id
        for owner, cid in ((bob, mine.id), (alice, uuid.uuid4())):
            with pytest.raises(ChatError) as missing:
                await conversations.owned(s, owner, cid)
            assert missing.value.code == ErrorCode.NOT_FOUND
            assert str(cid) in missing.value.message


async def test_create_with_someone_elses_assistant_is_not_found(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async with db.begin() as s:
        alice, bob = await two_users(s)
        bobs = await teams.first_assistant(s, bob)
        assert bobs is not None
        with pytest.raises(ChatError) as refused:
            await conversations.create(s, alice, title=None, assistant_id=bobs.id)
        assert refused.value.code == ErrorCode.NOT_FOUND
        alices = await teams.first_assistant(s, alice)
        assert alices is not None
        made = await conversations.create(s, alice, title=None, assistant_id=None)
        assert made.default_assistant_id == alices.id


async def test_history_pages_oldest_first_and_only_for_the_owner(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async with db.begin() as s:
        alice, bob = await two_users(s)
        conversation = await conversations.create(s, alice, title=None, assistant_id=None)
        for n in range(5):
            await queries.store_turn(
                s,
                conversation.id,
                client_id=f"c{n}",
                text=f"m{n}",
                assistant_id=conversation.default_assistant_id,
                reply_meta={},
            )
        page, more = await conversations.history(
            s, alice, conversation.id, before_seq=None, limit=4
        )
        rows = [row for row, _, _ in page]
        assert more is True
        assert [r.seq for r in rows] == list(range(7, 11))
        older, _ = await conversations.history(
            s, alice, conversation.id, before_seq=rows[0].seq, limit=50
        )
        assert [r.seq for r, _, _ in older] == list(range(1, 7))
        with pytest.raises(ChatError):
            await conversations.history(s, bob, conversation.id, before_seq=None, limit=4)
