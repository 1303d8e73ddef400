"""REST under ``/api/v1``: the assistant team (assistants, skills), conversations and
their history, routing dry runs and misroute feedback.

Auth is the WebSocket's: ``Authorization: Bearer <token>``. A user sees only their own
rows: another user's ids are 404, exactly like unknown ids. Bodies are validated by
msgspec: a bad one is 422 naming the field. The handlers are thin: the use cases are in
``conversations`` and ``router``, the plumbing (validation, errors, the one table that
makes both the routes and the OpenAPI document) in ``rest``.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response
from starlette.routing import Route

from chat_server import conversations, rest
from chat_server.api_schema import (
    AssistantIn,
    AssistantOut,
    AssistantPatch,
    AssistantRefOut,
    BranchIn,
    Candidate,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    ExampleIn,
    ExampleOut,
    FeedbackIn,
    FeedbackOut,
    MessagePage,
    RouteIn,
    RouteOut,
    SkillIn,
    SkillOut,
    SkillPatch,
    UsageOut,
)
from chat_server.rest import (
    ApiError,
    Caller,
    Endpoint,
    apply_patch,
    decode_body,
    owned_row,
    path_id,
    respond,
)
from chat_server.router.embedding import phrases
from chat_server.router.learning import learn_misroute
from chat_server.storage import queries
from chat_server.storage.models import Assistant, Conversation, Skill, SkillExample
from chat_server.tools import api as tools_api
from chat_server.turns import quota
from chat_server.wire import conversation_updated, message_info
from protocol.messages import MAX_SEQ

R = TypeVar("R")
CONVERSATIONS_LIMIT = rest.Query("limit", "page size", 1, 100, 20)
CURSOR = rest.Query("cursor", "next_cursor of the previous page")
MESSAGES_LIMIT = rest.Query("limit", "page size", 1, 200, 50)
BEFORE_SEQ = rest.Query("before_seq", "only messages before this seq (older pages)", 1, MAX_SEQ)


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


def _conversation_out(c: Conversation) -> ConversationOut:
    return ConversationOut(
        id=c.id,
        title=c.title,
        assistant_id=c.default_assistant_id,
        last_seq=c.last_seq,
        leaf_id=c.leaf_id,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


# ---------------------------------------------------------------- assistants


async def list_assistants(c: Caller) -> Response:
    async with c.db() as s:
        return respond([_assistant_out(a) for a in await queries.list_assistants(s, c.user_id)])


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
    return await owned_row(s, c, "assistant", queries.get_assistant)


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
        rows = await queries.list_skills(s, c.user_id, assistant.id)
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
        await queries.set_description_phrases(s, skill, parts, embedder=embedder.name)
        return respond(_skill_out(skill, 0), 201)


async def _embed_description(
    c: Caller, description: str
) -> tuple[list[float], list[tuple[str, list[float]]]]:
    """The whole description's vector, and each of its phrases with its own."""
    parts = phrases(description)
    vectors = await c.runtime.turns.embedder.embed([description, *parts])
    return vectors[0], list(zip(parts, vectors[1:], strict=True))


async def _own_skill(s: AsyncSession, c: Caller) -> Skill:
    return await owned_row(s, c, "skill", queries.get_skill)


async def _skill_response(s: AsyncSession, c: Caller, skill: Skill) -> Response:
    counts = dict((k.id, n) for k, n in await queries.list_skills(s, c.user_id, skill.assistant_id))
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
            await queries.set_description_phrases(s, skill, described[1], embedder=embedder.name)
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
        return respond([_example_out(e) for e in await queries.list_examples(s, skill)])


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
        await s.delete(await owned_row(s, c, "example", queries.get_example))
    return Response(status_code=204)


# ---------------------------------------------------------------- conversations


def _cursor(c: Conversation) -> str:
    raw = f"{c.updated_at.isoformat()}|{c.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except ValueError:
        raise ApiError(
            422, "validation_error", "cursor is not one this API gave", "cursor"
        ) from None


async def list_conversations(c: Caller) -> Response:
    limit = CONVERSATIONS_LIMIT.integer(c.request)
    assert limit is not None
    raw_cursor = c.request.query_params.get(CURSOR.name)
    before = _parse_cursor(raw_cursor) if raw_cursor else None
    async with c.db() as s:
        rows = await queries.list_conversations(s, c.user_id, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = _cursor(page[-1]) if len(rows) > limit else None
    return respond(
        ConversationPage(items=[_conversation_out(r) for r in page], next_cursor=next_cursor)
    )


async def create_conversation(c: Caller) -> Response:
    body = decode_body(ConversationIn, await c.request.body())
    async with c.db() as s:
        created = await conversations.create(
            s, c.user_id, title=body.title, assistant_id=body.assistant_id
        )
        await s.refresh(created)
        return respond(_conversation_out(created), 201)


async def _own_conversation(s: AsyncSession, c: Caller) -> Conversation:
    return await conversations.owned(s, c.user_id, path_id(c, "conversation"))


async def get_conversation(c: Caller) -> Response:
    async with c.db() as s:
        return respond(_conversation_out(await _own_conversation(s, c)))


async def rename_conversation(c: Caller) -> Response:
    """A new title; every device joined to the conversation hears of it at once."""
    body = decode_body(ConversationPatch, await c.request.body())
    async with c.db() as s:
        conversation = await _own_conversation(s, c)
        conversation.title = body.title
        await s.flush()
        await s.refresh(conversation)
        out, updated = _conversation_out(conversation), conversation_updated(conversation)
    await c.runtime.hub.publish(updated)
    return respond(out)


async def delete_conversation(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await _own_conversation(s, c))
    return Response(status_code=204)


async def list_messages(c: Caller) -> Response:
    limit = MESSAGES_LIMIT.integer(c.request)
    before_seq = BEFORE_SEQ.integer(c.request)
    assert limit is not None
    async with c.db() as s:
        rows, has_more = await conversations.history(
            s, c.user_id, path_id(c, "conversation"), before_seq=before_seq, limit=limit
        )
    return respond(MessagePage(messages=[message_info(*r) for r in rows], has_more=has_more))


async def switch_branch(c: Caller) -> Response:
    """Show another branch; every device joined to the conversation hears of it."""
    body = decode_body(BranchIn, await c.request.body())
    async with c.db() as s:
        conversation = await conversations.switch(
            s, c.user_id, path_id(c, "conversation"), body.message_id, body.alternative
        )
        out, updated = _conversation_out(conversation), conversation_updated(conversation)
    await c.runtime.hub.publish(updated)
    return respond(out)


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


# ---------------------------------------------------------------- usage


async def usage(c: Caller) -> Response:
    """The caller's model tokens of today (UTC) and their daily quota."""
    async with c.db() as s:
        today = await quota.today(s, c.user_id, c.runtime.settings.daily_token_quota)
    return respond(
        UsageOut(
            day=datetime.now(UTC).date().isoformat(),
            input_tokens=today.input_tokens,
            output_tokens=today.output_tokens,
            used=today.used,
            quota=today.quota,
            resets_in_ms=quota.reset_ms(),
        )
    )


# ---------------------------------------------------------------- the table


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
        "GET",
        "/conversations",
        list_conversations,
        "List my conversations (newest first; ?limit, ?cursor)",
        None,
        ConversationPage,
        query=(CONVERSATIONS_LIMIT, CURSOR),
    ),
    Endpoint(
        "POST",
        "/conversations",
        create_conversation,
        "Create a conversation",
        ConversationIn,
        ConversationOut,
        201,
        body_ids=True,
    ),
    Endpoint(
        "GET",
        "/conversations/{conversation_id}",
        get_conversation,
        "Get a conversation",
        None,
        ConversationOut,
    ),
    Endpoint(
        "PATCH",
        "/conversations/{conversation_id}",
        rename_conversation,
        "Rename a conversation (its devices get a conversation event)",
        ConversationPatch,
        ConversationOut,
    ),
    Endpoint(
        "DELETE",
        "/conversations/{conversation_id}",
        delete_conversation,
        "Delete a conversation and its messages",
        None,
        None,
        204,
    ),
    Endpoint(
        "GET",
        "/conversations/{conversation_id}/messages",
        list_messages,
        "A page of the branch shown (?before_seq, ?limit)",
        None,
        MessagePage,
        query=(BEFORE_SEQ, MESSAGES_LIMIT),
    ),
    Endpoint(
        "POST",
        "/conversations/{conversation_id}/branch",
        switch_branch,
        "Show the branch through a message or one of its alternatives",
        BranchIn,
        ConversationOut,
        body_ids=True,
    ),
    Endpoint("GET", "/usage", usage, "My model tokens today and my daily quota", None, UsageOut),
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


ENDPOINTS += tools_api.ENDPOINTS


def routes() -> list[Route]:
    return rest.routes(ENDPOINTS)


def openapi() -> dict[str, Any]:
    return rest.openapi(ENDPOINTS)
