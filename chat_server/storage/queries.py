"""Typed query functions over an explicit AsyncSession.

The caller opens the transaction (``async with sessionmaker.begin() as s``) so the
reader sees where it starts and ends. Nothing here commits on its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.storage.models import Assistant, Conversation, Message, User

DEFAULT_ASSISTANT_NAME = "Secretary"
DEFAULT_SYSTEM_PROMPT = (
    "You are a capable, concise secretary on a team of AI assistants. "
    "Answer in the language of the user."
)


async def ensure_user(s: AsyncSession, external_id: str, *, default_model: str) -> User:
    """The user for an authenticated subject; a new user gets one default assistant."""
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


async def get_assistant(
    s: AsyncSession, owner_id: uuid.UUID, assistant_id: uuid.UUID
) -> Assistant | None:
    return await s.scalar(
        select(Assistant).where(Assistant.id == assistant_id, Assistant.owner_id == owner_id)
    )


async def first_assistant(s: AsyncSession, owner_id: uuid.UUID) -> Assistant | None:
    return await s.scalar(
        select(Assistant)
        .where(Assistant.owner_id == owner_id)
        .order_by(Assistant.created_at, Assistant.id)
        .limit(1)
    )


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


async def get_conversation(
    s: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> Conversation | None:
    """None when it does not exist *or* belongs to someone else (callers say not_found)."""
    return await s.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner_id == owner_id
        )
    )


@dataclass(frozen=True, slots=True)
class StoredTurn:
    user_message: Message
    reply: Message | None  # the streaming placeholder; None for a duplicate
    duplicate: bool


async def store_turn(
    s: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    client_id: str,
    text: str,
    assistant_id: uuid.UUID,
    reply_meta: dict[str, Any],
) -> StoredTurn:
    """Store a user turn and its reply placeholder (status streaming) atomically.

    The conversation row lock serialises every writer of this conversation, across
    replicas, so the duplicate check and the seq allocation cannot race. A resent
    ``client_id`` returns the original message and stores nothing.
    """
    await s.execute(
        select(Conversation.id).where(Conversation.id == conversation_id).with_for_update()
    )
    existing = await s.scalar(
        select(Message).where(
            Message.conversation_id == conversation_id, Message.client_id == client_id
        )
    )
    if existing is not None:
        return StoredTurn(existing, None, duplicate=True)
    last_seq = await s.scalar(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(last_seq=Conversation.last_seq + 2, updated_at=func.now())
        .returning(Conversation.last_seq)
    )
    assert last_seq is not None
    user_message = Message(
        conversation_id=conversation_id,
        seq=last_seq - 1,
        role="user",
        text=text,
        status="complete",
        client_id=client_id,
        meta={},
    )
    s.add(user_message)
    await s.flush()
    reply = Message(
        conversation_id=conversation_id,
        seq=last_seq,
        role="assistant",
        text="",
        status="streaming",
        reply_to=user_message.id,
        assistant_id=assistant_id,
        meta=reply_meta,
    )
    s.add(reply)
    await s.flush()
    await s.refresh(user_message)
    await s.refresh(reply)
    return StoredTurn(user_message, reply, duplicate=False)


async def finish_reply(
    s: AsyncSession, message_id: uuid.UUID, *, text: str, status: str, meta: dict[str, Any]
) -> Message | None:
    """Write a reply's final text once. None if it was already finished (by anyone)."""
    return await s.scalar(
        update(Message)
        .where(Message.id == message_id, Message.status == "streaming")
        .values(text=text, status=status, meta=Message.meta.op("||")(meta), updated_at=func.now())
        .returning(Message)
    )


async def messages_after(
    s: AsyncSession, conversation_id: uuid.UUID, after_seq: int, limit: int
) -> list[Message]:
    rows = await s.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.seq > after_seq)
        .order_by(Message.seq)
        .limit(limit)
    )
    return list(rows)


async def history_page(
    s: AsyncSession, conversation_id: uuid.UUID, *, before_seq: int | None, limit: int
) -> tuple[list[Message], bool]:
    """Up to ``limit`` messages before ``before_seq`` (newest page first), oldest first."""
    query = select(Message).where(Message.conversation_id == conversation_id)
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    rows = list(await s.scalars(query.order_by(Message.seq.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    return rows[:limit][::-1], has_more


async def context_window(
    s: AsyncSession, conversation_id: uuid.UUID, *, before_seq: int, limit: int
) -> list[Message]:
    """The recent finished messages a model sees before the turn at ``before_seq``."""
    rows = await s.scalars(
        select(Message)
        .where(
            Message.conversation_id == conversation_id,
            Message.seq < before_seq,
            Message.status != "streaming",
            Message.text != "",
        )
        .order_by(Message.seq.desc())
        .limit(limit)
    )
    return list(rows)[::-1]


async def streaming_replies(s: AsyncSession, *, older_than_ms: int) -> list[Message]:
    """Replies still streaming that started at least ``older_than_ms`` ago."""
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_ms / 1000.0)
    return list(
        await s.scalars(
            select(Message).where(Message.status == "streaming", Message.created_at <= cutoff)
        )
    )
