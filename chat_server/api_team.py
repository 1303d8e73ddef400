"""REST under ``/api/v1`` for the assistant team: assistants, their skills and the
skills' example utterances, routing dry runs and misroute feedback (joined into the
API's endpoint table by ``chat_server.api``). A change here re-reads the team's
vectors for routing (``changes_team``)."""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from chat_server import conversations
from chat_server.api_schema import (
    AssistantIn,
    AssistantOut,
    AssistantPatch,
    AssistantRefOut,
    Candidate,
    ExampleIn,
    ExampleOut,
    FeedbackIn,
    FeedbackOut,
    RouteIn,
    RouteOut,
    SkillIn,
    SkillOut,
    SkillPatch,
)
from chat_server.rest import Caller, Endpoint, apply_patch, decode_body, owned_row, respond
from chat_server.router.embedding import phrases
from chat_server.router.learning import learn_misroute
from chat_server.storage import teams
from chat_server.storage.models import Assistant, Skill, SkillExample

# ---------------------------------------------------------------- converters


def _assistant_out(a: Assistant) -> AssistantOut:
    return msgspec.convert(a, AssistantOut, from_attributes=True)


def _skill_out(skill: Skill, examples: int) -> SkillOut:
    return SkillOut(
        id=skill.id,
        assistant_id=skill.assistant_id,
        name=skill.name,
        description=skill.description,
        threshold=skill.threshold,
        examples=examples,
    )


# ---------------------------------------------------------------- assistants


async def list_assistants(c: Caller) -> Response:
    async with c.db() as s:
        return respond([_assistant_out(a) for a in await teams.list_assistants(s, c.user_id)])


async def create_assistant(c: Caller) -> Response:
    body = decode_body(AssistantIn, await c.request.body())
    async with c.db() as s:
        assistant = Assistant(
            owner_id=c.user_id,
            name=body.name,
            description=body.description,
            system_prompt=body.system_prompt,
            default_model=body.default_model or c.runtime.settings.gemini_model,
            complex_model=body.complex_model,
            thinking_budget=body.thinking_budget,
        )
        s.add(assistant)
        await s.flush()
        await s.refresh(assistant)
        return respond(_assistant_out(assistant), 201)


async def _own_assistant(s: AsyncSession, c: Caller) -> Assistant:
    return await owned_row(s, c, "assistant", teams.get_assistant)


async def get_assistant(c: Caller) -> Response:
    async with c.db() as s:
        return respond(_assistant_out(await _own_assistant(s, c)))


async def update_assistant(c: Caller) -> Response:
    body = decode_body(AssistantPatch, await c.request.body())
    async with c.db() as s:
        assistant = await _own_assistant(s, c)
        apply_patch(assistant, body)
        await s.flush()
        await s.refresh(assistant)
        return respond(_assistant_out(assistant))


async def delete_assistant(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await _own_assistant(s, c))
    return Response(status_code=204)


# ---------------------------------------------------------------- skills


async def list_skills(c: Caller) -> Response:
    async with c.db() as s:
        assistant = await _own_assistant(s, c)
        rows = await teams.list_skills(s, c.user_id, assistant.id)
        return respond([_skill_out(skill, n) for skill, n in rows])


async def create_skill(c: Caller) -> Response:
    body = decode_body(SkillIn, await c.request.body())
    embedder = c.runtime.turns.embedder
    vector, parts = await _embed_description(c, body.description)
    async with c.db() as s:
        assistant = await _own_assistant(s, c)
        skill = Skill(
            assistant_id=assistant.id,
            owner_id=c.user_id,
            name=body.name,
            description=body.description,
            threshold=embedder.default_threshold if body.threshold is None else body.threshold,
            embedding=vector,
            embedder=embedder.name,
        )
        s.add(skill)
        await s.flush()
        await teams.set_description_phrases(s, skill, parts, embedder=embedder.name)
        return respond(_skill_out(skill, 0), 201)


async def _embed_description(
    c: Caller, description: str
) -> tuple[list[float], list[tuple[str, list[float]]]]:
    """The whole description's vector, and each of its phrases with its own."""
    parts = phrases(description)
    vectors = await c.runtime.turns.embedder.embed([description, *parts])
    return vectors[0], list(zip(parts, vectors[1:], strict=True))


async def _own_skill(s: AsyncSession, c: Caller) -> Skill:
    return await owned_row(s, c, "skill", teams.get_skill)


async def _skill_response(s: AsyncSession, c: Caller, skill: Skill) -> Response:
    counts = dict((k.id, n) for k, n in await teams.list_skills(s, c.user_id, skill.assistant_id))
    return respond(_skill_out(skill, counts.get(skill.id, 0)))


async def get_skill(c: Caller) -> Response:
    async with c.db() as s:
        return await _skill_response(s, c, await _own_skill(s, c))


async def update_skill(c: Caller) -> Response:
    body = decode_body(SkillPatch, await c.request.body())
    embedder = c.runtime.turns.embedder
    described = None
    if body.description is not msgspec.UNSET:
        described = await _embed_description(c, body.description)
    async with c.db() as s:
        skill = await _own_skill(s, c)
        if body.name is not msgspec.UNSET:
            skill.name = body.name
        if body.threshold is not msgspec.UNSET:
            skill.threshold = body.threshold
        if described is not None:
            skill.description, skill.embedding, skill.embedder = (
                str(body.description),
                described[0],
                embedder.name,
            )
            await teams.set_description_phrases(s, skill, described[1], embedder=embedder.name)
        await s.flush()
        return await _skill_response(s, c, skill)


async def delete_skill(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await _own_skill(s, c))
    return Response(status_code=204)


def _example_out(e: SkillExample) -> ExampleOut:
    return ExampleOut(
        id=e.id, skill_id=e.skill_id, text=e.text, source=e.source, created_at=e.created_at
    )


async def list_examples(c: Caller) -> Response:
    async with c.db() as s:
        skill = await _own_skill(s, c)
        return respond([_example_out(e) for e in await teams.list_examples(s, skill)])


async def add_example(c: Caller) -> Response:
    """An utterance that belongs to the skill; it routes like the skill's description."""
    body = decode_body(ExampleIn, await c.request.body())
    embedder = c.runtime.turns.embedder
    (vector,) = await embedder.embed([body.text])
    async with c.db() as s:
        skill = await _own_skill(s, c)
        example = SkillExample(
            skill_id=skill.id,
            owner_id=c.user_id,
            source="example",
            text=body.text,
            embedding=vector,
            embedder=embedder.name,
        )
        s.add(example)
        await s.flush()
        await s.refresh(example)
        return respond(_example_out(example), 201)


async def delete_example(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await owned_row(s, c, "example", teams.get_example))
    return Response(status_code=204)


# ---------------------------------------------------------------- routing


async def dry_run(c: Caller) -> Response:
    body = decode_body(RouteIn, await c.request.body())
    turns = c.runtime.turns
    vector = None if body.assistant_id else await turns.embed_turn(body.text)
    async with c.db() as s:
        _, decision = await conversations.route(
            s,
            c.user_id,
            body.conversation_id,
            text=body.text,
            vector=vector,
            matcher=turns.matcher,
            assistant_id=body.assistant_id,
            thinking=turns.thinking,
        )
    a = decision.analysis
    return respond(
        RouteOut(
            assistant=AssistantRefOut(id=decision.assistant.id, name=decision.assistant.name),
            model=decision.model,
            reason=decision.reason,
            skill=decision.skill,
            skill_id=decision.skill_id,
            score=decision.score,
            confidence=decision.confidence,
            language=a.language,
            kind=a.kind,
            complexity=a.complexity,
            thinking_budget=decision.thinking_budget,
            why=decision.why,
            candidates=[
                Candidate(
                    skill_id=h.skill_id,
                    skill=h.skill,
                    assistant_id=h.assistant_id,
                    assistant=h.assistant,
                    score=round(h.score, 4),
                    threshold=h.threshold,
                    via_example=h.via_example,
                )
                for h in decision.candidates
            ],
        )
    )


async def feedback(c: Caller) -> Response:
    """Learn from a misroute: the turn becomes an example of the right assistant's skill
    (the one given, else its nearest), so the next similar turn routes there."""
    body = decode_body(FeedbackIn, await c.request.body())
    learned = await learn_misroute(
        c.runtime.db,
        c.runtime.turns.embedder,
        c.user_id,
        message_id=body.message_id,
        assistant_id=body.assistant_id,
        skill_id=body.skill_id,
    )
    return respond(
        FeedbackOut(
            skill_id=learned.skill_id,
            example_id=learned.example_id,
            created_skill=learned.created_skill,
        ),
        201,
    )


ENDPOINTS = [
    Endpoint("GET", "/assistants", list_assistants, "List my assistants", None, list[AssistantOut]),
    Endpoint(
        "POST",
        "/assistants",
        create_assistant,
        "Create an assistant",
        AssistantIn,
        AssistantOut,
        201,
        changes_team=True,
    ),
    Endpoint(
        "GET", "/assistants/{assistant_id}", get_assistant, "Get an assistant", None, AssistantOut
    ),
    Endpoint(
        "PATCH",
        "/assistants/{assistant_id}",
        update_assistant,
        "Update an assistant",
        AssistantPatch,
        AssistantOut,
    ),
    Endpoint(
        "DELETE",
        "/assistants/{assistant_id}",
        delete_assistant,
        "Delete an assistant",
        None,
        None,
        204,
        changes_team=True,
    ),
    Endpoint(
        "GET",
        "/assistants/{assistant_id}/skills",
        list_skills,
        "List an assistant's skills",
        None,
        list[SkillOut],
    ),
    Endpoint(
        "POST",
        "/assistants/{assistant_id}/skills",
        create_skill,
        "Add a skill",
        SkillIn,
        SkillOut,
        201,
        changes_team=True,
    ),
    Endpoint("GET", "/skills/{skill_id}", get_skill, "Get a skill", None, SkillOut),
    Endpoint(
        "PATCH",
        "/skills/{skill_id}",
        update_skill,
        "Update a skill (re-embeds a new description)",
        SkillPatch,
        SkillOut,
        changes_team=True,
    ),
    Endpoint(
        "GET",
        "/skills/{skill_id}/examples",
        list_examples,
        "A skill's example utterances (given and learned)",
        None,
        list[ExampleOut],
    ),
    Endpoint(
        "POST",
        "/skills/{skill_id}/examples",
        add_example,
        "Add an example utterance to a skill",
        ExampleIn,
        ExampleOut,
        201,
        changes_team=True,
    ),
    Endpoint(
        "DELETE",
        "/examples/{example_id}",
        delete_example,
        "Delete an example (given or learned)",
        None,
        None,
        204,
        changes_team=True,
    ),
    Endpoint(
        "DELETE",
        "/skills/{skill_id}",
        delete_skill,
        "Delete a skill",
        None,
        None,
        204,
        changes_team=True,
    ),
    Endpoint(
        "POST",
        "/route",
        dry_run,
        "Dry run: which assistant and model would answer, and why",
        RouteIn,
        RouteOut,
        body_ids=True,
    ),
    Endpoint(
        "POST",
        "/feedback",
        feedback,
        "This turn should have gone to another assistant",
        FeedbackIn,
        FeedbackOut,
        201,
        body_ids=True,
    ),
]
