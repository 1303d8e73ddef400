"""What the router learns and keeps up to date: examples from misroutes, and vectors
re-made when the embedder changes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.errors import ChatError
from chat_server.router.embedding import Embedder
from chat_server.storage import queries, teams
from chat_server.storage.models import Skill, SkillExample
from protocol.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class Learned:
    skill_id: uuid.UUID
    example_id: uuid.UUID
    created_skill: bool


async def learn_misroute(
    db: async_sessionmaker[AsyncSession],
    embedder: Embedder,
    owner_id: uuid.UUID,
    *,
    message_id: uuid.UUID,
    assistant_id: uuid.UUID,
    skill_id: uuid.UUID | None,
) -> Learned:
    """The user turn of ``message_id`` (or the turn a reply answered) becomes an example
    of the right assistant's skill: the one given, else its nearest, else a new
    "learned" skill; the next similar turn routes there."""
    async with db.begin() as s:
        message = await queries.get_message(s, owner_id, message_id)
        if message is not None and message.role == "assistant" and message.reply_to:
            message = await queries.get_message(s, owner_id, message.reply_to)
        if message is None:
            raise ChatError(ErrorCode.NOT_FOUND, "message not found")
        if await teams.get_assistant(s, owner_id, assistant_id) is None:
            raise ChatError(ErrorCode.NOT_FOUND, "assistant not found")
        text = message.text
    (vector,) = await embedder.embed([text])
    async with db.begin() as s:
        created = False
        if skill_id is not None:
            skill = await teams.get_skill(s, owner_id, skill_id)
            if skill is None or skill.assistant_id != assistant_id:
                raise ChatError(ErrorCode.NOT_FOUND, "skill not found")
        else:
            skill = await teams.nearest_skill_of(s, assistant_id, vector, embedder=embedder.name)
        if skill is None:
            skill = Skill(
                assistant_id=assistant_id,
                owner_id=owner_id,
                name="learned",
                description=text[:2000],
                threshold=embedder.default_threshold,
                embedding=vector,
                embedder=embedder.name,
            )
            s.add(skill)
            await s.flush()
            created = True
        example = SkillExample(
            skill_id=skill.id,
            owner_id=owner_id,
            source="feedback",
            text=text,
            embedding=vector,
            embedder=embedder.name,
        )
        s.add(example)
        await s.flush()
        return Learned(skill.id, example.id, created)


async def reembed(db: async_sessionmaker[AsyncSession], embedder: Embedder, batch: int = 64) -> int:
    """Re-embed skills and examples made by another embedder (or none yet)."""
    async with db.begin() as s:
        skills, examples = await teams.stale_vectors(s, embedder.name)
        rows: list[tuple[Any, str]] = [(r, r.description) for r in skills]
        rows += [(r, r.text) for r in examples]
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            vectors = await embedder.embed([text for _, text in chunk])
            for (row, _), vector in zip(chunk, vectors, strict=True):
                row.embedding, row.embedder = vector, embedder.name
    return len(rows)
