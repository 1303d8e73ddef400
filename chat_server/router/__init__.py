"""Turn routing: which assistant of the user's team answers a turn, with which model,
and why. One pipeline, each step a small unit:

1. ``analysis.analyse``: language, kind of task, complexity (no I/O);
2. skill matching: the turn's embedding against the owner's skills and learned
   examples, exact cosine in Postgres (``teams.nearest_skills``);
3. ``select``: an explicit ``assistant_id`` wins, then the best skill at or above its
   threshold whose calibrated confidence clears the embedder's bar (``abstain``: how the
   turn compares with small talk against this team), then the conversation's default
   assistant (the abstain path);
4. ``pick_model`` and ``fit_history``: the model for this assistant and complexity,
   and the history window that fits the token budget.

The decision is sent in ``turn_start.route`` and stored with the reply.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.errors import ChatError
from chat_server.llm import ChatTurn
from chat_server.router.abstain import Calibration, Matcher
from chat_server.router.analysis import Analysis, analyse, estimate_tokens
from chat_server.storage import teams
from chat_server.storage.models import Assistant
from protocol.errors import ErrorCode

__all__ = ["Calibration", "Decision", "Evidence", "Matcher", "route", "select"]

log = logging.getLogger(__name__)

CANDIDATES = 5  # nearest skills looked at (and reported by a dry run)


@dataclass(frozen=True, slots=True)
class Thinking:
    """The deployment's thinking budgets (``THINKING_BUDGET``, ``FAST_THINKING_BUDGET``)."""

    default: int = -1  # complex turns of an assistant without a budget of its own
    fast: int = 0  # every other turn: a thinking model's first token in ~0.5 s, not ~8 s


@dataclass(frozen=True, slots=True)
class Decision:
    assistant: Assistant
    model: str
    reason: str  # explicit | skill | default | fallback
    analysis: Analysis
    why: str
    thinking_budget: int = 0
    skill: str | None = None
    skill_id: uuid.UUID | None = None
    score: float | None = None
    confidence: float | None = None  # in [0, 1], calibrated per team (router.abstain)
    candidates: list[teams.SkillHit] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Choice:
    assistant_id: uuid.UUID | None
    reason: str
    hit: teams.SkillHit | None
    why: str
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a turn's hits are measured against (None without a vector)."""

    nobody_score: float  # the turn's similarity to the nearest NOBODY example
    calibration: Calibration
    min_confidence: float  # the embedder's bar; 0 for one that cannot tell small talk

    def confidence(self, hit: teams.SkillHit) -> float:
        return self.calibration.confidence(hit.score - self.nobody_score)


def select(
    explicit: uuid.UUID | None,
    hits: Sequence[teams.SkillHit],
    default: uuid.UUID | None,
    evidence: Evidence | None = None,
) -> Choice:
    """Step 3. ``hits`` are ordered best first."""
    if explicit is not None:
        return Choice(explicit, "explicit", None, "the turn named its assistant")
    reasons = []
    for hit in hits:
        confidence = evidence.confidence(hit) if evidence is not None else None
        if hit.score < hit.threshold:
            reasons.append(f"'{hit.skill}' {hit.score:.2f} < {hit.threshold:.2f}")
            continue
        if evidence is not None and confidence is not None:
            if hit.via_example and hit.score < evidence.calibration.example_bar:
                reasons.append(
                    f"a learned example of '{hit.skill}' matched {hit.score:.2f}, below "
                    f"the team's {evidence.calibration.example_bar:.2f}"
                )
                continue
            if confidence < evidence.min_confidence:
                reasons.append(
                    f"'{hit.skill}' confidence {confidence:.2f} < {evidence.min_confidence:.2f}"
                    " (no closer to the skill than small talk is)"
                )
                break  # the hits below score lower still
        source = "a learned example of" if hit.via_example else "skill"
        why = (
            f"{source} '{hit.skill}' of {hit.assistant} matched "
            f"{hit.score:.2f} >= {hit.threshold:.2f}"
        )
        if confidence is not None:
            why += f", confidence {confidence:.2f}"
        return Choice(hit.assistant_id, "skill", hit, why, confidence)
    top = evidence.confidence(hits[0]) if evidence is not None and hits else None
    why = "no skill fits (" + "; ".join(reasons[:2]) + ")" if reasons else "no skills to match"
    return Choice(default, "default", None, why + ": the conversation's assistant answers", top)


def pick_model(assistant: Assistant, analysis: Analysis) -> tuple[str, str]:
    """Step 4a: the assistant's model, or its model for complex turns."""
    if analysis.complexity == "high" and assistant.complex_model:
        return assistant.complex_model, "complex turn"
    return assistant.default_model, f"{analysis.complexity} complexity"


def pick_thinking(assistant: Assistant, analysis: Analysis, thinking: Thinking) -> int:
    """Step 4a too: the assistant's thinking budget for complex turns, the low-latency
    one for the rest."""
    if analysis.complexity != "high":
        return thinking.fast
    return thinking.default if assistant.thinking_budget is None else assistant.thinking_budget


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
    # Never start inside a tool exchange: tool results need the calls before them.
    while len(kept) > 1 and (kept[0].calls or kept[0].results):
        kept.pop(0)
    return kept


async def route(
    s: AsyncSession,
    *,
    owner_id: uuid.UUID,
    text: str,
    vector: list[float] | None,
    matcher: Matcher,
    default_assistant_id: uuid.UUID | None,
    explicit_assistant_id: uuid.UUID | None,
    thinking: Thinking = Thinking(),
) -> Decision:
    analysis = analyse(text)
    hits: list[teams.SkillHit] = []
    evidence = None
    if vector is not None and explicit_assistant_id is None:
        embedder = matcher.embedder
        hits = await teams.nearest_skills(
            s, owner_id, vector, embedder=embedder.name, limit=CANDIDATES
        )
        if hits:
            try:
                evidence = Evidence(
                    await matcher.nobody_score(vector),
                    await matcher.calibration(s, owner_id),
                    embedder.min_confidence,
                )
            except Exception:  # the embedder is away (Gemini): thresholds alone decide
                log.warning("routing without calibration", exc_info=True)
    choice = select(explicit_assistant_id, hits, default_assistant_id, evidence)
    assistant = (
        await teams.get_assistant(s, owner_id, choice.assistant_id)
        if choice.assistant_id is not None
        else None
    )
    reason, why = choice.reason, choice.why
    if assistant is None:
        if explicit_assistant_id is not None:
            raise ChatError(ErrorCode.NOT_FOUND, f"assistant {explicit_assistant_id} not found")
        assistant = await teams.first_assistant(s, owner_id)
        if assistant is None:
            raise ChatError(ErrorCode.NOT_FOUND, "this user has no assistant to answer")
        reason, why = "fallback", why + " (none set: the first assistant answers)"
    model, model_why = pick_model(assistant, analysis)
    budget = pick_thinking(assistant, analysis, thinking)
    return Decision(
        assistant=assistant,
        model=model,
        reason=reason,
        analysis=analysis,
        why=f"{why}; {model_why} -> {model}, thinking budget {budget}",
        thinking_budget=budget,
        skill=choice.hit.skill if choice.hit else None,
        skill_id=choice.hit.skill_id if choice.hit else None,
        score=round(choice.hit.score, 4) if choice.hit else None,
        confidence=choice.confidence,
        candidates=hits,
    )
