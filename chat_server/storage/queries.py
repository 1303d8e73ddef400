"""Typed query functions over an explicit AsyncSession: users, conversations, their
messages and branches, replies and usage (the team's queries are in ``teams``).

The caller opens the transaction (``async with sessionmaker.begin() as s``) so the
reader sees where it starts and ends. Nothing here commits on its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Date,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from chat_server.storage.models import (
    Assistant,
    Conversation,
    Message,
    UsageDaily,
    User,
)
from chat_server.storage.teams import first_assistant, get_assistant

DEFAULT_ASSISTANT_NAME = "Secretary"
DEFAULT_SYSTEM_PROMPT = (
    "You are a capable, concise secretary on a team of AI assistants. "
    "Answer in the language of the user."
)


async def ensure_user(s: AsyncSession, external_id: str, *, default_model: str) -> User:
    """The user for an authenticated subject; a new user gets one default assistant.

    A returning user costs one read: the insert (which makes the transaction write and
    its commit wait for a WAL flush) runs only for a subject not seen before."""
    user = await s.scalar(select(User).where(User.external_id == external_id))
    if user is not None:
        return user
    inserted = await s.scalar(
        insert(User)
        .values(id=uuid.uuid4(), external_id=external_id)
        .on_conflict_do_nothing(index_elements=[User.external_id])
        .returning(User.id)
    )
    if inserted is not None:
        s.add(
            Assistant(
                owner_id=inserted,
                name=DEFAULT_ASSISTANT_NAME,
                description="General help: answers, drafts, reminders.",
                system_prompt=DEFAULT_SYSTEM_PROMPT,
                default_model=default_model,
            )
        )
        await s.flush()
    user = await s.scalar(select(User).where(User.external_id == external_id))
    assert user is not None  # inserted above or by a concurrent first login
    return user


async def create_conversation(
    s: AsyncSession,
    owner_id: uuid.UUID,
    *,
    title: str | None,
    default_assistant_id: uuid.UUID | None,
) -> Conversation:
    conversation = Conversation(
        owner_id=owner_id, title=title, default_assistant_id=default_assistant_id, last_seq=0
    )
    s.add(conversation)
    await s.flush()
    return conversation


async def new_conversation(
    s: AsyncSession, owner_id: uuid.UUID, *, title: str | None, assistant_id: uuid.UUID | None
) -> Conversation | None:
    """A conversation answered by ``assistant_id`` (the owner's first assistant if None).
    None when that assistant is not the owner's."""
    if assistant_id is not None:
        if await get_assistant(s, owner_id, assistant_id) is None:
            return None
    else:
        first = await first_assistant(s, owner_id)
        assistant_id = first.id if first else None
    return await create_conversation(s, owner_id, title=title, default_assistant_id=assistant_id)


async def get_conversation(
    s: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> Conversation | None:
    """None when it does not exist *or* belongs to someone else (callers say not_found)."""
    return await s.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner_id == owner_id
        )
    )


_OWNED_CONVERSATION = (
    "SELECT id, owner_id, title, default_assistant_id, last_seq, leaf_id, created_at,"
    " updated_at FROM conversations WHERE id = $1 AND owner_id = $2"
)


async def owned_conversation(
    db: async_sessionmaker[AsyncSession], owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> Conversation | None:
    """The caller's conversation, read on the driver itself: one round trip, no
    transaction, asyncpg's cached prepared statement. Every join and reconnect reads it;
    through the ORM session (BEGIN, the query, COMMIT, the unit of work) the same read
    cost ~2 ms of CPU, most of a returning device's join. The row is detached."""
    engine = db.kw["bind"]
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        record = await raw.driver_connection.fetchrow(
            _OWNED_CONVERSATION, conversation_id, owner_id
        )
    return Conversation(**dict(record)) if record is not None else None


# A message with its place among its alternatives (siblings: the same parent), as
# (row, alternative, alternatives): the 1-based rank by seq, and how many there are.
Placed = tuple[Message, int, int]


def _siblings(a: Any, b: Any) -> Any:
    """SQL: messages ``a`` and ``b`` are alternatives (the same parent, or both roots)."""
    return and_(
        a.conversation_id == b.conversation_id,
        or_(a.parent_id == b.parent_id, and_(a.parent_id.is_(None), b.parent_id.is_(None))),
    )


def _place(m: Any) -> tuple[Any, Any]:
    """SQL for where ``m`` stands among its siblings: (alternative, alternatives)."""
    sibling = aliased(Message)
    same = _siblings(sibling, m)
    count = select(func.count()).select_from(sibling)
    rank = count.where(same, sibling.seq <= m.seq).scalar_subquery()
    return rank, count.where(same).scalar_subquery()


# Built once: constructing the aliased subqueries per statement cost ~6 % of a busy
# replica's CPU (py-spy); SQLAlchemy caches the compiled SQL either way.
_PLACE = _place(Message)


def _placed(rows: Any) -> list[Placed]:
    return [(row, int(rank), int(count)) for row, rank, count in rows]


@dataclass(frozen=True, slots=True)
class StoredTurn:
    user_message: Message
    reply: Message | None  # the streaming placeholder; None for a duplicate
    duplicate: bool
    user_place: tuple[int, int] = (1, 1)  # (alternative, alternatives), as in ``Placed``
    reply_place: tuple[int, int] = (1, 1)


@dataclass(frozen=True, slots=True)
class _Locked:
    leaf: uuid.UUID | None  # the active leaf
    last_seq: int
    existing: Message | None  # already stored under the client id (a resend)
    below_leaf: int  # messages whose parent is the leaf (the roots when there is none)


_LOCK = (
    select(Conversation.leaf_id, Conversation.last_seq)
    .where(Conversation.id == bindparam("conversation_id"))
    .with_for_update()
)


def _check_statement() -> Any:
    """The message already stored under a client id, if any, and how many messages
    hang below a leaf (the roots for none): one row, whatever is found."""
    below = aliased(Message)
    leaf = bindparam("leaf", type_=Message.id.type)
    children = (
        select(func.count())
        .select_from(below)
        .where(
            below.conversation_id == bindparam("conversation_id"),
            or_(below.parent_id == leaf, and_(below.parent_id.is_(None), leaf.is_(None))),
        )
        .scalar_subquery()
    )
    found = (
        select(Message)
        .where(
            Message.conversation_id == bindparam("conversation_id"),
            Message.client_id == bindparam("client_id"),
        )
        .subquery()
    )
    one = select(literal(1).label("one")).subquery()  # a row even when nothing is found
    return (
        select(children, aliased(Message, found)).select_from(one).outerjoin(found, literal(True))
    )


_LOCK_CHECK = _check_statement()  # both built once, like _PLACE


async def _lock(s: AsyncSession, conversation_id: uuid.UUID, client_id: str) -> _Locked:
    """Take the conversation's row lock (its leaf and last seq), then read in one round
    trip the message already stored under ``client_id`` (a resent send or regenerate),
    if any, and how many messages hang below the leaf.

    The lock serialises every writer of this conversation, across replicas, so the
    duplicate check, the counts and the seq allocation cannot race. The check is a
    statement of its own, after the lock: in READ COMMITTED only a new statement sees
    what the writer that held the lock before committed."""
    leaf, last_seq = (await s.execute(_LOCK, {"conversation_id": conversation_id})).one()
    values = {"conversation_id": conversation_id, "client_id": client_id, "leaf": leaf}
    below, existing = (await s.execute(_LOCK_CHECK, values)).one()
    return _Locked(leaf, last_seq, existing, below)


async def _append(
    s: AsyncSession, conversation_id: uuid.UUID, last_seq: int, rows: list[Message]
) -> None:
    """Store ``rows`` (parents set, seqs not) as the next seqs after ``last_seq`` (read
    under the lock); the last one becomes the active leaf."""
    await s.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(last_seq=last_seq + len(rows), leaf_id=rows[-1].id, updated_at=func.now())
    )
    for n, row in enumerate(rows, start=1):
        row.seq = last_seq + n
    s.add_all(rows)
    await s.flush()


async def _places(s: AsyncSession, rows: list[Message]) -> list[Placed]:
    """``rows`` placed among their siblings (read back after they were stored)."""
    ids = [row.id for row in rows]
    return _placed(
        await s.execute(select(Message, *_PLACE).where(Message.id.in_(ids)).order_by(Message.seq))
    )


async def store_turn(
    s: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    client_id: str,
    text: str,
    assistant_id: uuid.UUID,
    reply_meta: dict[str, Any],
    edit_of: Message | None = None,
) -> StoredTurn:
    """Store a user turn and its reply placeholder (status streaming) atomically, after
    the active leaf, or with ``edit_of`` (a user turn of this conversation) as a new
    alternative of it: a branch from its parent. A resent ``client_id`` returns the
    original message and stores nothing."""
    locked = await _lock(s, conversation_id, client_id)
    if locked.existing is not None:
        return StoredTurn(locked.existing, None, duplicate=True)
    parent = edit_of.parent_id if edit_of is not None else locked.leaf
    user_message = Message(
        id=uuid.uuid4(),
        conversation_id=conversation_id,
        role="user",
        text=text,
        status="complete",
        client_id=client_id,
        parent_id=parent,
        meta={},
    )
    reply = _placeholder(conversation_id, user_message.id, assistant_id, reply_meta, None)
    await _append(s, conversation_id, locked.last_seq, [user_message, reply])
    if edit_of is None:  # after the leaf: the newest of what hung below it; its reply, alone
        n = locked.below_leaf + 1
        return StoredTurn(user_message, reply, False, (n, n), (1, 1))
    user, placed = await _places(s, [user_message, reply])
    return StoredTurn(user[0], placed[0], False, user[1:], placed[1:])


async def store_regeneration(
    s: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    client_id: str,
    user_message: Message,
    assistant_id: uuid.UUID,
    reply_meta: dict[str, Any],
    after: uuid.UUID | None = None,
) -> StoredTurn:
    """Store a new reply placeholder to an earlier user turn: an alternative to the
    replies it has, on a new active branch. ``client_id`` (the regenerate's id) makes
    a resent regenerate return the first one and store nothing. ``after``: the reply
    this one follows instead (a handoff: the teammate answers after the one who handed
    over), so it is not an alternative."""
    locked = await _lock(s, conversation_id, client_id)
    if locked.existing is not None:
        return StoredTurn(locked.existing, None, duplicate=True)
    reply = _placeholder(conversation_id, user_message.id, assistant_id, reply_meta, client_id)
    if after is not None:
        reply.parent_id = after
    await _append(s, conversation_id, locked.last_seq, [reply])
    (placed,) = await _places(s, [reply])
    return StoredTurn(user_message, placed[0], False, reply_place=placed[1:])


def _placeholder(
    conversation_id: uuid.UUID,
    user_id: uuid.UUID,
    assistant_id: uuid.UUID,
    meta: dict[str, Any],
    client_id: str | None,
) -> Message:
    return Message(
        id=uuid.uuid4(),
        conversation_id=conversation_id,
        role="assistant",
        text="",
        status="streaming",
        reply_to=user_id,
        parent_id=user_id,
        assistant_id=assistant_id,
        client_id=client_id,
        meta=meta,
    )


async def user_turn(
    s: AsyncSession, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> Message | None:
    """A user turn of this conversation (to regenerate its reply or edit it)."""
    return await s.scalar(
        select(Message).where(
            Message.id == message_id,
            Message.conversation_id == conversation_id,
            Message.role == "user",
        )
    )


async def finish_reply(
    s: AsyncSession,
    message_id: uuid.UUID,
    *,
    text: str,
    status: str,
    meta: dict[str, Any],
    swept: bool = False,
    usage: tuple[int, int] = (0, 0),
) -> Placed | None:
    """Write a reply's final text once. None if it was already finished (by anyone).

    ``swept``: a sweeper ends the reply of a replica presumed dead, and ``meta`` records
    it. The generating replica's own write (not ``swept``) also replaces such an ending
    when its text is longer: a stored reply is never shorter than what was shown.

    ``usage`` (input, output tokens) is added to the conversation owner's usage of today
    (UTC) by the same statement, and only if this write won: counted once, and one round
    trip for both. A sweeper's ending counts none."""
    values = {"message_id": message_id, "text": text, "status": status}
    values |= {"meta": {**meta, "swept": swept}}
    if swept:
        statement = _FINISH_SWEPT
    elif any(usage):
        statement = _FINISH_COUNTED
        values |= {"input_tokens": usage[0], "output_tokens": usage[1]}
    else:
        statement = _FINISH
    placed = _placed(await s.execute(statement, values))
    return placed[0] if placed else None


def _finish_statements() -> tuple[Any, Any, Any]:
    """finish_reply's three statements, built once with bind parameters: the write by
    a sweeper, the generating replica's write, and that write with the usage added.
    Each is the update as a CTE and the written row placed among its siblings; the
    counted one also feeds the usage upsert from the CTE (no row written, nothing
    counted)."""

    def written(swept: bool) -> Any:
        finishable = Message.status == "streaming"
        if not swept:
            longer = func.char_length(Message.text) < func.char_length(
                bindparam("text", type_=Text)
            )
            finishable = or_(finishable, and_(Message.meta["swept"].as_boolean().is_(True), longer))
        return (
            update(Message)
            .where(Message.id == bindparam("message_id"), finishable)
            .values(
                text=bindparam("text", type_=Text),
                status=bindparam("status"),
                meta=Message.meta.op("||")(bindparam("meta", type_=JSONB)),
                updated_at=func.now(),
            )
            .returning(*Message.__table__.c)
            .cte("written")
        )

    def placed(cte: Any) -> Any:
        row = aliased(Message, cte)
        return select(row, *_place(row))

    write = written(swept=False)
    today = func.timezone("UTC", func.now()).cast(Date)
    tokens = bindparam("input_tokens", type_=Integer), bindparam("output_tokens", type_=Integer)
    counted = insert(UsageDaily).from_select(
        ["user_id", "day", "input_tokens", "output_tokens"],
        select(Conversation.owner_id, today, *tokens).join(
            write, write.c.conversation_id == Conversation.id
        ),
    )
    counted = counted.on_conflict_do_update(
        index_elements=[UsageDaily.user_id, UsageDaily.day],
        set_={
            "input_tokens": UsageDaily.input_tokens + counted.excluded.input_tokens,
            "output_tokens": UsageDaily.output_tokens + counted.excluded.output_tokens,
        },
    )
    return (
        placed(written(swept=True)),
        placed(write),
        placed(write).add_cte(counted.cte("counted")),
    )


_FINISH_SWEPT, _FINISH, _FINISH_COUNTED = _finish_statements()


@dataclass(frozen=True, slots=True)
class Standing:
    input_tokens: int  # today (UTC)
    output_tokens: int
    override: int | None  # the user's own daily quota, if set
    streaming: int  # the user's replies streaming now, on any replica


async def standing(s: AsyncSession, user_id: uuid.UUID) -> Standing:
    """What a turn's limits need to know about its user, in one round trip: today's
    usage, the quota override and the replies streaming now (the partial index on
    streaming messages keeps that count a small scan)."""
    today = func.timezone("UTC", func.now()).cast(Date)
    mine = (UsageDaily.user_id == user_id, UsageDaily.day == today)
    row = (
        await s.execute(
            select(
                User.daily_token_quota,
                select(UsageDaily.input_tokens).where(*mine).scalar_subquery(),
                select(UsageDaily.output_tokens).where(*mine).scalar_subquery(),
                select(func.count())
                .select_from(Message)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.status == "streaming", Conversation.owner_id == user_id)
                .scalar_subquery(),
            ).where(User.id == user_id)
        )
    ).one_or_none()
    if row is None:
        return Standing(0, 0, None, 0)
    override, input_tokens, output_tokens, streaming = row
    return Standing(input_tokens or 0, output_tokens or 0, override, streaming or 0)


async def set_quota(s: AsyncSession, external_id: str, tokens: int | None) -> bool:
    """Set a user's daily token quota override (None: back to the setting); False if no
    such user."""
    updated = await s.execute(
        update(User).where(User.external_id == external_id).values(daily_token_quota=tokens)
    )
    return bool(updated.rowcount)  # type: ignore[attr-defined]


async def messages_after(
    s: AsyncSession, conversation_id: uuid.UUID, after_seq: int, limit: int
) -> list[Placed]:
    """Every message after ``after_seq``, on any branch (what a resuming device missed:
    seqs stay gap-free across branches; each new message became the active leaf)."""
    rows = await s.execute(
        select(Message, *_PLACE)
        .where(Message.conversation_id == conversation_id, Message.seq > after_seq)
        .order_by(Message.seq)
        .limit(limit)
    )
    return _placed(rows)


def _path(conversation_id: uuid.UUID, tip: uuid.UUID, depth: int | None) -> Any:
    """The branch from ``tip`` up to its root (at most ``depth`` messages), as a CTE."""
    path = (
        select(Message.id, Message.parent_id, literal(1).label("depth"))
        .where(Message.id == tip, Message.conversation_id == conversation_id)
        .cte("path", recursive=True)
    )
    up = aliased(Message)
    step = select(up.id, up.parent_id, path.c.depth + 1).join(path, up.id == path.c.parent_id)
    if depth is not None:
        step = step.where(path.c.depth < depth)
    return path.union_all(step)


async def branch_page(
    s: AsyncSession, conversation: Conversation, *, before_seq: int | None, limit: int
) -> tuple[list[Placed], bool]:
    """Up to ``limit`` messages of the active branch before ``before_seq`` (newest page
    first), oldest first, each placed among its alternatives."""
    if conversation.leaf_id is None:
        return [], False
    path = _path(conversation.id, conversation.leaf_id, None)
    query = select(Message, *_PLACE).join(path, path.c.id == Message.id)
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    rows = _placed(await s.execute(query.order_by(Message.seq.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    return rows[:limit][::-1], has_more


async def context_window(
    s: AsyncSession, conversation_id: uuid.UUID, *, tip: uuid.UUID | None, limit: int
) -> list[Message]:
    """The recent finished messages a model sees: the branch ending at ``tip`` (a user
    turn, or the active leaf), never an alternative that is not on it."""
    if tip is None:
        return []
    path = _path(conversation_id, tip, 2 * limit)
    rows = await s.scalars(
        select(Message)
        .join(path, path.c.id == Message.id)
        .where(Message.status != "streaming", Message.text != "")
        .order_by(Message.seq.desc())
        .limit(limit)
    )
    return list(rows)[::-1]


async def switch_branch(
    s: AsyncSession, conversation_id: uuid.UUID, message_id: uuid.UUID, alternative: int | None
) -> uuid.UUID | None:
    """Show the branch through ``message_id`` (or through its ``alternative``-th sibling):
    the newest message below it becomes the active leaf. None if there is no such
    message in the conversation."""
    target: Any = select(Message.id).where(
        Message.id == message_id, Message.conversation_id == conversation_id
    )
    if alternative is not None:
        this = aliased(Message)
        sibling = aliased(Message)
        target = (
            select(sibling.id)
            .join(this, _siblings(this, sibling))
            .where(this.id == message_id, this.conversation_id == conversation_id)
            .order_by(sibling.seq)
            .offset(alternative - 1)
            .limit(1)
        )
    top = await s.scalar(target)
    if top is None:
        return None
    below = select(Message.id, Message.seq).where(Message.id == top).cte("below", recursive=True)
    child = aliased(Message)
    below = below.union_all(select(child.id, child.seq).join(below, child.parent_id == below.c.id))
    leaf = await s.scalar(select(below.c.id).order_by(below.c.seq.desc()).limit(1))
    await s.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(leaf_id=leaf, updated_at=func.now())
    )
    return leaf


async def streaming_replies(s: AsyncSession, *, older_than_ms: int) -> list[Message]:
    """Replies still streaming that started at least ``older_than_ms`` ago."""
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_ms / 1000.0)
    return list(
        await s.scalars(
            select(Message).where(Message.status == "streaming", Message.created_at <= cutoff)
        )
    )


async def list_conversations(
    s: AsyncSession,
    owner_id: uuid.UUID,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[Conversation]:
    """Most recently active first; ``before`` is the keyset cursor of the last page."""
    query = select(Conversation).where(Conversation.owner_id == owner_id)
    if before is not None:
        query = query.where(
            tuple_(Conversation.updated_at, Conversation.id) < tuple_(before[0], before[1])
        )
    query = query.order_by(Conversation.updated_at.desc(), Conversation.id.desc())
    return list(await s.scalars(query.limit(limit)))


async def get_message(
    s: AsyncSession, owner_id: uuid.UUID, message_id: uuid.UUID
) -> Message | None:
    return await s.scalar(
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id == message_id, Conversation.owner_id == owner_id)
    )
