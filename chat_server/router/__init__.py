"""Turn routing: which assistant answers a turn, with which model, and why.

Order: an explicit ``assistant_id`` on the turn, then the conversation's default
assistant, then the user's first assistant. (Skill matching with pgvector slots in
between explicit and default; see issue 4.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.storage import queries
from chat_server.storage.models import Assistant
from protocol.errors import ErrorCode, ErrorReply


@dataclass(frozen=True, slots=True)
class Decision:
    assistant: Assistant
    model: str
    reason: str  # explicit | default | fallback
    skill: str | None = None
    score: float | None = None


async def route(
    s: AsyncSession,
    *,
    owner_id: uuid.UUID,
    default_assistant_id: uuid.UUID | None,
    explicit_assistant_id: uuid.UUID | None,
) -> Decision:
    if explicit_assistant_id is not None:
        assistant = await queries.get_assistant(s, owner_id, explicit_assistant_id)
        if assistant is None:
            raise ErrorReply(ErrorCode.NOT_FOUND, f"assistant {explicit_assistant_id} not found")
        return Decision(assistant, assistant.default_model, "explicit")
    if default_assistant_id is not None:
        assistant = await queries.get_assistant(s, owner_id, default_assistant_id)
        if assistant is not None:
            return Decision(assistant, assistant.default_model, "default")
    assistant = await queries.first_assistant(s, owner_id)
    if assistant is None:
        raise ErrorReply(ErrorCode.NOT_FOUND, "this user has no assistant to answer")
    return Decision(assistant, assistant.default_model, "fallback")
