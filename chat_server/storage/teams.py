"""Typed queries on a user's team: assistants, their skills and the skills' vectors
(descriptions, phrases, examples), and their tools. What the router matches a turn
against and what the REST API for the team edits.

Like ``queries``: over an explicit AsyncSession, the caller owns the transaction.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.storage.models import Assistant, Skill, SkillExample, Tool


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


@dataclass(frozen=True, slots=True)
class SkillHit:
    skill_id: uuid.UUID
    skill: str
    assistant_id: uuid.UUID
    assistant: str
    score: float  # cosine similarity, 1 = same direction
    threshold: float
    via_example: bool  # matched a turn learned from feedback rather than the description


def _nearest_statement() -> Any:
    """``nearest_skills``' query, with the turn's vector bound once for both of its uses."""
    vector = bindparam("vector", type_=Skill.embedding.type)
    owner_id = bindparam("owner_id", type_=Skill.owner_id.type)
    embedder = bindparam("embedder", type_=Skill.embedder.type)
    descriptions = select(
        Skill.id.label("skill_id"),
        Skill.embedding.cosine_distance(vector).label("distance"),
        literal(False).label("via_example"),
    ).where(Skill.owner_id == owner_id, Skill.embedder == embedder)
    examples = select(
        SkillExample.skill_id,
        SkillExample.embedding.cosine_distance(vector),
        SkillExample.source == "feedback",
    ).where(SkillExample.owner_id == owner_id, SkillExample.embedder == embedder)
    candidates = union_all(descriptions, examples).subquery()
    best = (
        select(
            candidates.c.skill_id,
            candidates.c.distance,
            candidates.c.via_example,
            func.row_number()
            .over(
                partition_by=(candidates.c.skill_id, candidates.c.via_example),
                order_by=candidates.c.distance,
            )
            .label("rank"),
        )
    ).subquery()
    return (
        select(Skill, Assistant.name, best.c.distance, best.c.via_example)
        .join(best, best.c.skill_id == Skill.id)
        .join(Assistant, Assistant.id == Skill.assistant_id)
        .where(best.c.rank == 1)
        .order_by(best.c.distance)
        .limit(bindparam("limit", type_=Integer))
    )


# Built once: building it per turn cost ~4 % of a replica's event loop (py-spy,
# load/bench_turns.py), and a vector bound twice was turned into text twice.
_NEAREST = _nearest_statement()


async def nearest_skills(
    s: AsyncSession, owner_id: uuid.UUID, vector: list[float], *, embedder: str, limit: int
) -> list[SkillHit]:
    """The owner's skills nearest to ``vector``: each skill scores by its closest vector
    (its whole description, one of its phrases or given examples), and, as a hit of its
    own (``via_example``), by its closest learned turn: a learned turn the router finds
    not specific enough must not hide how the skill's own words scored. Exact cosine
    over one owner's rows."""
    values = {"vector": vector, "owner_id": owner_id, "embedder": embedder, "limit": limit}
    rows = await s.execute(_NEAREST, values)
    # A text with nothing to embed (symbols only) is a zero vector, and its cosine
    # distance NaN (Postgres sorts it last): no similarity at all.
    return [
        SkillHit(
            skill.id,
            skill.name,
            skill.assistant_id,
            name,
            0.0 if math.isnan(d) else 1.0 - float(d),
            skill.threshold,
            ex,
        )
        for skill, name, d, ex in rows
    ]


async def team_vectors(
    s: AsyncSession, owner_id: uuid.UUID, *, embedder: str
) -> list[tuple[uuid.UUID, list[float]]]:
    """The owner's skill vectors (descriptions, their phrases and given examples; not
    learned ones), each with its assistant: what the router calibrates a team on."""
    descriptions = select(Skill.assistant_id, Skill.embedding).where(
        Skill.owner_id == owner_id, Skill.embedder == embedder
    )
    examples = (
        select(Skill.assistant_id, SkillExample.embedding)
        .join(Skill, Skill.id == SkillExample.skill_id)
        .where(
            SkillExample.owner_id == owner_id,
            SkillExample.embedder == embedder,
            SkillExample.source != "feedback",
        )
    )
    rows = await s.execute(union_all(descriptions, examples))
    return [(assistant, list(vector)) for assistant, vector in rows if vector is not None]


async def stale_vectors(s: AsyncSession, embedder: str) -> tuple[list[Skill], list[SkillExample]]:
    """Skills and examples embedded by another embedder (or not yet): to re-embed."""
    skills = await s.scalars(
        select(Skill).where((Skill.embedder != embedder) | Skill.embedder.is_(None))
    )
    examples = await s.scalars(
        select(SkillExample).where(
            (SkillExample.embedder != embedder) | SkillExample.embedder.is_(None)
        )
    )
    return list(skills), list(examples)


async def list_assistants(s: AsyncSession, owner_id: uuid.UUID) -> list[Assistant]:
    return list(
        await s.scalars(
            select(Assistant)
            .where(Assistant.owner_id == owner_id)
            .order_by(Assistant.created_at, Assistant.id)
        )
    )


async def get_skill(s: AsyncSession, owner_id: uuid.UUID, skill_id: uuid.UUID) -> Skill | None:
    return await s.scalar(select(Skill).where(Skill.id == skill_id, Skill.owner_id == owner_id))


async def list_examples(s: AsyncSession, skill: Skill) -> list[SkillExample]:
    """A skill's example utterances, given (``example``) and learned (``feedback``)."""
    rows = await s.scalars(
        select(SkillExample)
        .where(SkillExample.skill_id == skill.id, SkillExample.source != "description")
        .order_by(SkillExample.created_at, SkillExample.id)
    )
    return list(rows)


async def get_example(
    s: AsyncSession, owner_id: uuid.UUID, example_id: uuid.UUID
) -> SkillExample | None:
    return await s.scalar(
        select(SkillExample).where(
            SkillExample.id == example_id,
            SkillExample.owner_id == owner_id,
            SkillExample.source != "description",
        )
    )


async def list_skills(
    s: AsyncSession, owner_id: uuid.UUID, assistant_id: uuid.UUID
) -> list[tuple[Skill, int]]:
    """The assistant's skills with how many examples each has (given or learned)."""
    examples = (
        select(SkillExample.skill_id, func.count().label("n"))
        .where(SkillExample.source != "description")
        .group_by(SkillExample.skill_id)
        .subquery()
    )
    rows = await s.execute(
        select(Skill, func.coalesce(examples.c.n, 0))
        .outerjoin(examples, examples.c.skill_id == Skill.id)
        .where(Skill.owner_id == owner_id, Skill.assistant_id == assistant_id)
        .order_by(Skill.created_at, Skill.id)
    )
    return [(skill, int(n)) for skill, n in rows]


async def nearest_skill_of(
    s: AsyncSession, assistant_id: uuid.UUID, vector: list[float], *, embedder: str
) -> Skill | None:
    return await s.scalar(
        select(Skill)
        .where(Skill.assistant_id == assistant_id, Skill.embedder == embedder)
        .order_by(Skill.embedding.cosine_distance(vector))
        .limit(1)
    )


async def set_description_phrases(
    s: AsyncSession, skill: Skill, phrases: list[tuple[str, list[float]]], *, embedder: str
) -> None:
    """Replace the skill's description phrases (learned examples stay)."""
    await s.execute(
        delete(SkillExample).where(
            SkillExample.skill_id == skill.id, SkillExample.source == "description"
        )
    )
    for text, vector in phrases:
        s.add(
            SkillExample(
                skill_id=skill.id,
                owner_id=skill.owner_id,
                source="description",
                text=text,
                embedding=vector,
                embedder=embedder,
            )
        )
    await s.flush()


async def team_and_tools(
    s: AsyncSession, owner_id: uuid.UUID, assistant_id: uuid.UUID
) -> tuple[list[Assistant], list[Tool]]:
    """The owner's assistants (``list_assistants``) and one assistant's tools
    (``tools_of``), in one round trip: a turn needs both."""
    rows = await s.execute(
        select(Assistant, Tool)
        .outerjoin(Tool, and_(Tool.assistant_id == Assistant.id, Tool.assistant_id == assistant_id))
        .where(Assistant.owner_id == owner_id)
        .order_by(Assistant.created_at, Assistant.id, Tool.created_at, Tool.id)
    )
    team: dict[uuid.UUID, Assistant] = {}
    found: list[Tool] = []
    for assistant, tool in rows:
        team.setdefault(assistant.id, assistant)
        if tool is not None:
            found.append(tool)
    return list(team.values()), found


async def tools_of(s: AsyncSession, assistant_id: uuid.UUID) -> list[Tool]:
    return list(
        await s.scalars(
            select(Tool).where(Tool.assistant_id == assistant_id).order_by(Tool.created_at, Tool.id)
        )
    )


async def get_tool(s: AsyncSession, owner_id: uuid.UUID, tool_id: uuid.UUID) -> Tool | None:
    return await s.scalar(select(Tool).where(Tool.id == tool_id, Tool.owner_id == owner_id))
