"""Use cases on conversations, shared by the WebSocket session and the REST API.

Each takes an explicit SQLAlchemy session (the caller owns the transaction) and the
caller's user id, and raises ``ChatError(not_found)`` for a conversation or assistant
that does not exist *or* is someone else's: both look the same from outside.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import router
from chat_server.errors import ChatError
from chat_server.storage import queries
from chat_server.storage.models import Conversation
from chat_server.storage.models import Message as MessageRow
from protocol.errors import ErrorCode


async def owned(s: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation:
    """The caller's conversation; else not_found."""
    conversation = await queries.get_conversation(s, owner_id, conversation_id)
    if conversation is None:
        raise _missing(conversation_id)
    return conversation


async def owned_now(
    db: async_sessionmaker[AsyncSession], owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> Conversation:
    """``owned`` outside a transaction, in one round trip (a join's read)."""
    conversation = await queries.owned_conversation(db, owner_id, conversation_id)
    if conversation is None:
        raise _missing(conversation_id)
    return conversation


def _missing(conversation_id: uuid.UUID) -> ChatError:
    return ChatError(ErrorCode.NOT_FOUND, f"conversation {conversation_id} not found")


async def create(
    s: AsyncSession, owner_id: uuid.UUID, *, title: str | None, assistant_id: uuid.UUID | None
) -> Conversation:
    """A new conversation answered by ``assistant_id`` (else the owner's first assistant)."""
    created = await queries.new_conversation(s, owner_id, title=title, assistant_id=assistant_id)
    if created is None:
        raise ChatError(ErrorCode.NOT_FOUND, f"assistant {assistant_id} not found")
    return created


async def history(
    s: AsyncSession,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    before_seq: int | None,
    limit: int,
) -> tuple[list[queries.Placed], bool]:
    """A page of the branch shown in the caller's conversation, oldest first, and
    whether older ones exist."""
    conversation = await owned(s, owner_id, conversation_id)
    return await queries.branch_page(s, conversation, before_seq=before_seq, limit=limit)


async def switch(
    s: AsyncSession,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    alternative: int | None,
) -> Conversation:
    """Show the branch through ``message_id`` (or its ``alternative``-th sibling);
    not_found for a message (or an alternative) the conversation does not have."""
    conversation = await owned(s, owner_id, conversation_id)
    leaf = await queries.switch_branch(s, conversation.id, message_id, alternative)
    if leaf is None:
        which = f"alternative {alternative} of " if alternative is not None else ""
        raise ChatError(ErrorCode.NOT_FOUND, f"{which}message {message_id} not found")
    await s.refresh(conversation)
    return conversation


async def user_turn(
    s: AsyncSession, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> MessageRow:
    """A user turn of the conversation, to regenerate its reply or edit it; not_found
    for any other message (a reply, another conversation's)."""
    row = await queries.user_turn(s, conversation_id, message_id)
    if row is None:
        raise ChatError(ErrorCode.NOT_FOUND, f"user turn {message_id} not found")
    return row


async def route(
    s: AsyncSession,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID | None,
    *,
    text: str,
    vector: list[float] | None,
    matcher: router.Matcher,
    assistant_id: uuid.UUID | None,
    thinking: router.Thinking,
) -> tuple[Conversation | None, router.Decision]:
    """Which assistant and model answer ``text`` in the caller's conversation (or with no
    conversation, the team's default): the router's decision, for a turn or a dry run."""
    conversation = await owned(s, owner_id, conversation_id) if conversation_id else None
    decision = await router.route(
        s,
        owner_id=owner_id,
        text=text,
        vector=vector,
        matcher=matcher,
        default_assistant_id=conversation.default_assistant_id if conversation else None,
        explicit_assistant_id=assistant_id,
        thinking=thinking,
    )
    return conversation, decision
