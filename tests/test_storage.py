"""storage/: the migration matches the models; seq and idempotency hold under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from chat_server.storage import migrate, queries, teams
from chat_server.storage.db import async_url, make_engine
from chat_server.storage.models import EMBEDDING_DIM, Assistant, Message, Skill
from chat_server.storage.users import UserIds


def test_migrations_match_the_models(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url)
    command.check(config)  # raises if autogenerate would emit any operation


async def new_conversation(db: async_sessionmaker[AsyncSession]) -> tuple[uuid.UUID, uuid.UUID]:
    async with db.begin() as s:
        user = await queries.ensure_user(s, f"u-{uuid.uuid4()}", default_model="m")
        assistant = await teams.first_assistant(s, user.id)
        assert assistant is not None
        conversation = await queries.create_conversation(
            s, user.id, title=None, default_assistant_id=assistant.id
        )
        return conversation.id, assistant.id


async def store(
    db: async_sessionmaker[AsyncSession], cid: uuid.UUID, aid: uuid.UUID, client_id: str
) -> queries.StoredTurn:
    async with db.begin() as s:
        return await queries.store_turn(
            s, cid, client_id=client_id, text=client_id, assistant_id=aid, reply_meta={}
        )


@pytest.mark.asyncio
async def test_new_user_gets_one_default_assistant_even_on_concurrent_first_login(
    db: async_sessionmaker[AsyncSession],
) -> None:
    subject = f"u-{uuid.uuid4()}"

    async def login() -> uuid.UUID:
        async with db.begin() as s:
            return (await queries.ensure_user(s, subject, default_model="m")).id

    ids = await asyncio.gather(*(login() for _ in range(5)))
    assert len(set(ids)) == 1
    async with db() as s:
        names = list(await s.scalars(select(Assistant.name).where(Assistant.owner_id == ids[0])))
    assert names == [queries.DEFAULT_ASSISTANT_NAME]


@pytest.mark.asyncio
async def test_a_returning_subject_is_resolved_without_a_query(
    engine: AsyncEngine, db: async_sessionmaker[AsyncSession]
) -> None:
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    users = UserIds(db, default_model="m", size=2)
    ann, bob, cy = (f"{name}-{uuid.uuid4()}" for name in ("ann", "bob", "cy"))
    ann_id = await users.resolve(ann)
    assert statements, "a new subject is looked up (and created)"
    statements.clear()
    assert await users.resolve(ann) == ann_id
    assert statements == [], "a returning subject costs no query"
    await users.resolve(bob)
    await users.resolve(ann)  # ann is now the most recently used; bob goes next
    await users.resolve(cy)
    statements.clear()
    assert await users.resolve(ann) == ann_id
    assert statements == []
    await users.resolve(bob)
    assert statements, "the least recently used subject was forgotten (size=2)"
    async with db.begin() as s:  # and the cache agrees with Postgres
        assert (await queries.ensure_user(s, ann, default_model="m")).id == ann_id


@pytest.mark.asyncio
async def test_concurrent_turns_get_distinct_contiguous_seqs(
    db: async_sessionmaker[AsyncSession],
) -> None:
    cid, aid = await new_conversation(db)
    turns = await asyncio.gather(*(store(db, cid, aid, f"c{i}") for i in range(10)))
    seqs = sorted(s for t in turns for s in (t.user_message.seq, t.reply.seq if t.reply else 0))
    assert seqs == list(range(1, 21))
    for t in turns:
        assert t.reply is not None
        assert t.reply.seq == t.user_message.seq + 1
        assert t.reply.reply_to == t.user_message.id


@pytest.mark.asyncio
async def test_same_client_id_at_once_stores_one_turn(db: async_sessionmaker[AsyncSession]) -> None:
    cid, aid = await new_conversation(db)
    turns = await asyncio.gather(*(store(db, cid, aid, "same") for _ in range(6)))
    assert sum(not t.duplicate for t in turns) == 1
    assert len({t.user_message.id for t in turns}) == 1
    async with db() as s:
        count = len(list(await s.scalars(select(Message.id).where(Message.conversation_id == cid))))
    assert count == 2


@pytest.mark.asyncio
async def test_a_reply_is_finished_only_once(db: async_sessionmaker[AsyncSession]) -> None:
    cid, aid = await new_conversation(db)
    turn = await store(db, cid, aid, "x")
    assert turn.reply is not None
    async with db.begin() as s:
        first = await queries.finish_reply(
            s, turn.reply.id, text="done", status="complete", meta={"finish_reason": "stop"}
        )
    async with db.begin() as s:
        second = await queries.finish_reply(s, turn.reply.id, text="late", status="error", meta={})
    assert first is not None
    row, alternative, alternatives = first
    assert (row.text, row.status, row.meta["finish_reason"]) == ("done", "complete", "stop")
    assert (alternative, alternatives) == (1, 1)
    assert second is None


@pytest.mark.asyncio
async def test_skills_are_searchable_by_cosine_distance(
    db: async_sessionmaker[AsyncSession],
) -> None:
    _, aid = await new_conversation(db)
    async with db() as s:
        owner = await s.scalar(select(Assistant.owner_id).where(Assistant.id == aid))

    def axis(i: int) -> list[float]:
        v = [0.0] * EMBEDDING_DIM
        v[i] = 1.0
        return v

    async with db.begin() as s:
        for i, name in enumerate(["calendar", "research", "writing"]):
            s.add(
                Skill(
                    assistant_id=aid, owner_id=owner, name=name, description=name, embedding=axis(i)
                )
            )
    query = [0.1] * EMBEDDING_DIM
    query[1] = 3.0
    async with db() as s:
        nearest = await s.scalar(
            select(Skill.name)
            .where(Skill.assistant_id == aid)
            .order_by(Skill.embedding.cosine_distance(query))  # type: ignore[union-attr]
            .limit(1)
        )
    assert nearest == "research"


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as c:
        return int(await c.scalar(text("select pg_backend_pid()")))


async def _terminate(database_url: str, pid: int) -> None:
    killer = create_async_engine(async_url(database_url), poolclass=NullPool)
    async with killer.connect() as c:
        assert await c.scalar(text("select pg_terminate_backend(:pid)"), {"pid": pid})
    await killer.dispose()
    await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_connection_dropped_while_idle_is_replaced_before_use(database_url: str) -> None:
    engine = make_engine(database_url, ping_idle_s=0.0)  # every reuse counts as idle
    first = await _backend_pid(engine)
    await _terminate(database_url, first)
    second = await _backend_pid(engine)  # no error: the check found it gone
    assert second != first
    await engine.dispose()


@pytest.mark.asyncio
async def test_a_connection_dropped_right_after_use_fails_once_then_is_replaced(
    database_url: str,
) -> None:
    engine = make_engine(database_url, ping_idle_s=3600.0)  # reused unchecked
    first = await _backend_pid(engine)
    await _terminate(database_url, first)
    with pytest.raises(DBAPIError):
        await _backend_pid(engine)
    assert await _backend_pid(engine) != first
    await engine.dispose()


def test_migration_0005_links_existing_history_into_one_branch(database_url: str) -> None:
    """Conversations stored before branches existed become one linear branch: each
    message's parent is the one before it by seq, the newest is the leaf."""
    name = f"backfill_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def run(sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(url, "0004")
        user, conversation = uuid.uuid4(), uuid.uuid4()
        ids = [uuid.uuid4() for _ in range(4)]
        asyncio.run(run("INSERT INTO users (id, external_id) VALUES ($1, 'old')", user))
        asyncio.run(
            run(
                "INSERT INTO conversations (id, owner_id, last_seq) VALUES ($1, $2, 4)",
                conversation,
                user,
            )
        )
        for seq, message_id in enumerate(ids, start=1):
            role = "user" if seq % 2 else "assistant"
            asyncio.run(
                run(
                    "INSERT INTO messages (id, conversation_id, seq, role, text, status, meta)"
                    " VALUES ($1, $2, $3, $4, 'x', 'complete', '{}')",
                    message_id,
                    conversation,
                    seq,
                    role,
                )
            )
        migrate.upgrade(url, "head")
        rows = asyncio.run(run("SELECT id, parent_id FROM messages ORDER BY seq"))
        assert [(r["id"], r["parent_id"]) for r in rows] == [
            (ids[0], None),
            (ids[1], ids[0]),
            (ids[2], ids[1]),
            (ids[3], ids[2]),
        ]
        (leaf,) = asyncio.run(run("SELECT leaf_id FROM conversations"))
        assert leaf["leaf_id"] == ids[3]
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
