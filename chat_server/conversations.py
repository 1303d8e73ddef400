"""Use cases on conversations, shared by the WebSocket session and the REST API.

Each takes an explicit SQLAlchemy session (the caller owns the transaction) and the
caller's user id, and raises ``ChatError(not_found)`` for a conversation or assistant
that does not exist *or* is someone else's: both look the same from outside.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

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
        raise ChatError(ErrorCode.NOT_FOUND, f"conversation {conversation_id} not found")
    return conversation


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
) -> tuple[list[MessageRow], bool]:
    """A page of the caller's conversation, oldest first, and whether older ones exist."""
    conversation = await owned(s, owner_id, conversation_id)
    return await queries.history_page(s, conversation.id, before_seq=before_seq, limit=limit)


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
