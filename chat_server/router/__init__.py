"""Turn routing: which assistant of the user's team answers a turn, with which model,
and why. One pipeline, each step a small unit:

1. ``analysis.analyse``: language, kind of task, complexity (no I/O);
2. skill matching: the turn's embedding against the owner's skills and learned
   examples, exact cosine in Postgres (``queries.nearest_skills``);
3. ``select``: an explicit ``assistant_id`` wins, then the best skill at or above its
   threshold, then the conversation's default assistant (the abstain path);
4. ``pick_model`` and ``fit_history``: the model for this assistant and complexity,
   and the history window that fits the token budget.

The decision is sent in ``turn_start.route`` and stored with the reply.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.errors import ChatError
from chat_server.llm import ChatTurn
from chat_server.router.analysis import Analysis, analyse, estimate_tokens
from chat_server.storage import queries
from chat_server.storage.models import Assistant
from protocol.errors import ErrorCode

CANDIDATES = 5  # nearest skills looked at (and reported by a dry run)


@dataclass(frozen=True, slots=True)
class Decision:
    assistant: Assistant
    model: str
    reason: str  # explicit | skill | default | fallback
    analysis: Analysis
    why: str
    skill: str | None = None
    skill_id: uuid.UUID | None = None
    score: float | None = None
    candidates: list[queries.SkillHit] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Choice:
    assistant_id: uuid.UUID | None
    reason: str
    hit: queries.SkillHit | None
    why: str


def select(
    explicit: uuid.UUID | None, hits: Sequence[queries.SkillHit], default: uuid.UUID | None
) -> Choice:
    """Step 3. ``hits`` are ordered best first."""
    if explicit is not None:
        return Choice(explicit, "explicit", None, "the turn named its assistant")
    for hit in hits:
        if hit.score >= hit.threshold:
            source = "a learned example of" if hit.via_example else "skill"
            why = (
                f"{source} '{hit.skill}' of {hit.assistant} matched "
                f"{hit.score:.2f} >= {hit.threshold:.2f}"
            )
            return Choice(hit.assistant_id, "skill", hit, why)
    if hits:
        best = hits[0]
        why = (
            f"no skill at its threshold "
            f"(best '{best.skill}' {best.score:.2f} < {best.threshold:.2f})"
        )
    else:
        why = "no skills to match"
    return Choice(default, "default", None, why + ": the conversation's assistant answers")


def pick_model(assistant: Assistant, analysis: Analysis) -> tuple[str, str]:
    """Step 4a: the assistant's model, or its model for complex turns."""
    if analysis.complexity == "high" and assistant.complex_model:
        return assistant.complex_model, "complex turn"
    return assistant.default_model, f"{analysis.complexity} complexity"


def fit_history(turns: Sequence[ChatTurn], budget_tokens: int) -> list[ChatTurn]:
    """Step 4b: the newest turns whose estimated tokens fit the budget; the last turn
    (the user's new one) is always kept."""
    kept: list[ChatTurn] = []
    used = 0
    for turn in reversed(turns):
        cost = estimate_tokens(turn.text)
        if kept and used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


async def route(
    s: AsyncSession,
    *,
    owner_id: uuid.UUID,
    text: str,
    vector: list[float] | None,
    embedder: str,
    default_assistant_id: uuid.UUID | None,
    explicit_assistant_id: uuid.UUID | None,
) -> Decision:
    analysis = analyse(text)
    hits = (
        await queries.nearest_skills(s, owner_id, vector, embedder=embedder, limit=CANDIDATES)
        if vector is not None and explicit_assistant_id is None
        else []
    )
    choice = select(explicit_assistant_id, hits, default_assistant_id)
    assistant = (
        await queries.get_assistant(s, owner_id, choice.assistant_id)
        if choice.assistant_id is not None
        else None
    )
    reason, why = choice.reason, choice.why
    if assistant is None:
        if explicit_assistant_id is not None:
            raise ChatError(ErrorCode.NOT_FOUND, f"assistant {explicit_assistant_id} not found")
        assistant = await queries.first_assistant(s, owner_id)
        if assistant is None:
            raise ChatError(ErrorCode.NOT_FOUND, "this user has no assistant to answer")
        reason, why = "fallback", why + " (none set: the first assistant answers)"
    model, model_why = pick_model(assistant, analysis)
    return Decision(
        assistant=assistant,
        model=model,
        reason=reason,
        analysis=analysis,
        why=f"{why}; {model_why} -> {model}",
        skill=choice.hit.skill if choice.hit else None,
        skill_id=choice.hit.skill_id if choice.hit else None,
        score=round(choice.hit.score, 4) if choice.hit else None,
        candidates=hits,
    )
