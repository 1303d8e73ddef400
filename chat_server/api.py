"""REST under ``/api/v1``: the assistant team (assistants, skills), conversations and
their history, routing dry runs and misroute feedback.

Auth is the WebSocket's: ``Authorization: Bearer <token>``. A user sees only their own
rows: another user's ids are 404, exactly like unknown ids. Bodies are validated by
msgspec: a bad one is 422 naming the field. One table (``ENDPOINTS``) makes both the
routes and the OpenAPI document, so the two cannot drift.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
import orjson
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_server import conversations
from chat_server.errors import HTTP_STATUS, ChatError
from chat_server.router.embedding import phrases
from chat_server.runtime import Runtime
from chat_server.storage import queries
from chat_server.storage.models import Assistant, Conversation, Skill, SkillExample
from chat_server.turns import message_info
from protocol.messages import MAX_SEQ, NO_NUL, MessageInfo

PREFIX = "/api/v1"
T = TypeVar("T")
R = TypeVar("R")
# Every string a client sends is free of NUL: Postgres rejects it in text (a 500 before).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL)]
Prose = Annotated[str, msgspec.Meta(max_length=20_000, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=NO_NUL)]
Title = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
TurnText = Annotated[str, msgspec.Meta(min_length=1, max_length=16_000, pattern=NO_NUL)]
Model = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[\w.\-/:]+$")]
Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=200)]


class _In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AssistantIn(_In):
    name: Name
    description: Prose = ""
    system_prompt: Prose = ""
    default_model: Model | None = None  # the server's GEMINI_MODEL when omitted
    complex_model: Model | None = None


class AssistantPatch(_In):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Prose | msgspec.UnsetType = msgspec.UNSET
    system_prompt: Prose | msgspec.UnsetType = msgspec.UNSET
    default_model: Model | msgspec.UnsetType = msgspec.UNSET
    complex_model: Model | msgspec.UnsetType | None = msgspec.UNSET


class AssistantOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    description: str
    system_prompt: str
    default_model: str
    complex_model: str | None
    created_at: datetime
    updated_at: datetime


class SkillIn(_In):
    name: Name
    description: Description
    threshold: Threshold | None = None  # the embedder's default_threshold when omitted


class SkillPatch(_In):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    threshold: Threshold | msgspec.UnsetType = msgspec.UNSET


class SkillOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    assistant_id: uuid.UUID
    name: str
    description: str
    threshold: float
    examples: int  # turns learned from feedback


class ConversationIn(_In):
    title: Title | None = None
    assistant_id: uuid.UUID | None = None


class ConversationOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    title: str | None
    assistant_id: uuid.UUID | None
    last_seq: int
    created_at: datetime
    updated_at: datetime


class ConversationPage(msgspec.Struct, kw_only=True):
    items: list[ConversationOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page


class MessagePage(msgspec.Struct, kw_only=True):
    messages: list[MessageInfo]  # oldest first
    has_more: bool  # older messages exist: ?before_seq=<first seq>


class RouteIn(_In):
    text: TurnText
    conversation_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None


class Candidate(msgspec.Struct, kw_only=True):
    skill_id: uuid.UUID
    skill: str
    assistant_id: uuid.UUID
    assistant: str
    score: float
    threshold: float
    via_example: bool


class AssistantRefOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str


class RouteOut(msgspec.Struct, kw_only=True):
    assistant: AssistantRefOut
    model: str
    reason: str  # explicit | skill | default | fallback
    skill: str | None
    skill_id: uuid.UUID | None
    score: float | None
    language: str
    kind: str
    complexity: str
    why: str
    candidates: list[Candidate]  # nearest skills, best first


class FeedbackIn(_In):
    """``message_id`` is the misrouted user turn (or its reply); ``assistant_id`` the
    assistant that should have answered; ``skill_id`` optionally the skill it fits."""

    message_id: uuid.UUID
    assistant_id: uuid.UUID
    skill_id: uuid.UUID | None = None


class FeedbackOut(msgspec.Struct, kw_only=True):
    skill_id: uuid.UUID
    example_id: uuid.UUID
    created_skill: bool  # the assistant had no skill: one was made from the turn


class ErrorOut(msgspec.Struct, kw_only=True):
    error: str  # validation_error | bad_json | unauthorized | not_found
    message: str
    field: str | None = None  # for validation errors: which field, as a dotted path


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, ErrorOut(error=error, message=message, field=field)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(msgspec.to_builtins(value)), status, media_type="application/json")


_FIELD = re.compile(r"at `\$\.?([^`]*)`")


def _decode(kind: type[T], raw: bytes) -> T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        found = _FIELD.search(str(exc))
        field = found.group(1).replace("[", ".").replace("]", "") if found else None
        raise ApiError(422, "validation_error", str(exc), field or None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None


def _path_id(c: Caller, what: str) -> uuid.UUID:
    """The ``{what}_id`` path parameter; not an id at all is 404 (no such row either)."""
    try:
        return uuid.UUID(c.request.path_params[f"{what}_id"])
    except ValueError:
        raise _not_found(what) from None


@dataclass(frozen=True)
class Query:
    """A query parameter: the handler reads it and the OpenAPI document describes it
    from this one definition."""

    name: str
    description: str
    low: int | None = None  # an integer in low..high; None: an opaque string
    high: int | None = None
    default: int | None = None

    def schema(self) -> dict[str, Any]:
        if self.low is None:
            return {"type": "string"}
        schema = {"type": "integer", "minimum": self.low, "maximum": self.high}
        return schema | ({"default": self.default} if self.default is not None else {})

    def integer(self, request: Request) -> int | None:
        raw = request.query_params.get(self.name)
        if raw is None:
            return self.default
        low, high = self.low or 0, self.high or 0
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            message = f"{self.name} must be an integer in {low}..{high}"
            raise ApiError(422, "validation_error", message, self.name)
        return value


CONVERSATIONS_LIMIT = Query("limit", "page size", 1, 100, 20)
CURSOR = Query("cursor", "next_cursor of the previous page")
MESSAGES_LIMIT = Query("limit", "page size", 1, 200, 50)
BEFORE_SEQ = Query("before_seq", "only messages before this seq (older pages)", 1, MAX_SEQ)


@dataclass(frozen=True)
class Caller:
    runtime: Runtime
    user_id: uuid.UUID
    request: Request

    def db(self) -> Any:
        return self.runtime.db.begin()


async def _caller(request: Request) -> Caller:
    runtime: Runtime = request.app.state.runtime
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    subject = runtime.auth.subject(token)  # ChatError(unauthorized): 401
    return Caller(runtime, await runtime.users.resolve(subject), request)


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
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


# ---------------------------------------------------------------- assistants


async def list_assistants(c: Caller) -> Response:
    async with c.db() as s:
        return _json([_assistant_out(a) for a in await queries.list_assistants(s, c.user_id)])


async def create_assistant(c: Caller) -> Response:
    body = _decode(AssistantIn, await c.request.body())
    async with c.db() as s:
        assistant = Assistant(
            owner_id=c.user_id,
            name=body.name,
            description=body.description,
            system_prompt=body.system_prompt,
            default_model=body.default_model or c.runtime.settings.gemini_model,
            complex_model=body.complex_model,
        )
        s.add(assistant)
        await s.flush()
        await s.refresh(assistant)
        return _json(_assistant_out(assistant), 201)


async def _owned(
    s: AsyncSession,
    c: Caller,
    what: str,
    lookup: Callable[[AsyncSession, uuid.UUID, uuid.UUID], Awaitable[R | None]],
) -> R:
    """The caller's row named by the ``{what}_id`` path parameter; else 404."""
    row = await lookup(s, c.user_id, _path_id(c, what))
    if row is None:
        raise _not_found(what)
    return row


async def _own_assistant(s: AsyncSession, c: Caller) -> Assistant:
    return await _owned(s, c, "assistant", queries.get_assistant)


async def get_assistant(c: Caller) -> Response:
    async with c.db() as s:
        return _json(_assistant_out(await _own_assistant(s, c)))


async def update_assistant(c: Caller) -> Response:
    body = _decode(AssistantPatch, await c.request.body())
    async with c.db() as s:
        assistant = await _own_assistant(s, c)
        for name in body.__struct_fields__:
            value = getattr(body, name)
            if value is not msgspec.UNSET:
                setattr(assistant, name, value)
        await s.flush()
        await s.refresh(assistant)
        return _json(_assistant_out(assistant))


async def delete_assistant(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await _own_assistant(s, c))
    return Response(status_code=204)


# ---------------------------------------------------------------- skills


async def list_skills(c: Caller) -> Response:
    async with c.db() as s:
        assistant = await _own_assistant(s, c)
        rows = await queries.list_skills(s, c.user_id, assistant.id)
        return _json([_skill_out(skill, n) for skill, n in rows])


async def create_skill(c: Caller) -> Response:
    body = _decode(SkillIn, await c.request.body())
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
        return _json(_skill_out(skill, 0), 201)


async def _embed_description(
    c: Caller, description: str
) -> tuple[list[float], list[tuple[str, list[float]]]]:
    """The whole description's vector, and each of its phrases with its own."""
    parts = phrases(description)
    vectors = await c.runtime.turns.embedder.embed([description, *parts])
    return vectors[0], list(zip(parts, vectors[1:], strict=True))


async def _own_skill(s: AsyncSession, c: Caller) -> Skill:
    return await _owned(s, c, "skill", queries.get_skill)


async def _skill_response(s: AsyncSession, c: Caller, skill: Skill) -> Response:
    counts = dict((k.id, n) for k, n in await queries.list_skills(s, c.user_id, skill.assistant_id))
    return _json(_skill_out(skill, counts.get(skill.id, 0)))


async def get_skill(c: Caller) -> Response:
    async with c.db() as s:
        return await _skill_response(s, c, await _own_skill(s, c))


async def update_skill(c: Caller) -> Response:
    body = _decode(SkillPatch, await c.request.body())
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
    return _json(
        ConversationPage(items=[_conversation_out(r) for r in page], next_cursor=next_cursor)
    )


async def create_conversation(c: Caller) -> Response:
    body = _decode(ConversationIn, await c.request.body())
    async with c.db() as s:
        created = await conversations.create(
            s, c.user_id, title=body.title, assistant_id=body.assistant_id
        )
        await s.refresh(created)
        return _json(_conversation_out(created), 201)


async def _own_conversation(s: AsyncSession, c: Caller) -> Conversation:
    return await conversations.owned(s, c.user_id, _path_id(c, "conversation"))


async def get_conversation(c: Caller) -> Response:
    async with c.db() as s:
        return _json(_conversation_out(await _own_conversation(s, c)))


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
            s, c.user_id, _path_id(c, "conversation"), before_seq=before_seq, limit=limit
        )
    return _json(MessagePage(messages=[message_info(r) for r in rows], has_more=has_more))


# ---------------------------------------------------------------- routing


async def dry_run(c: Caller) -> Response:
    body = _decode(RouteIn, await c.request.body())
    turns = c.runtime.turns
    vector = None if body.assistant_id else await turns.embed_turn(body.text)
    async with c.db() as s:
        _, decision = await conversations.route(
            s,
            c.user_id,
            body.conversation_id,
            text=body.text,
            vector=vector,
            embedder=turns.embedder.name,
            assistant_id=body.assistant_id,
        )
    a = decision.analysis
    return _json(
        RouteOut(
            assistant=AssistantRefOut(id=decision.assistant.id, name=decision.assistant.name),
            model=decision.model,
            reason=decision.reason,
            skill=decision.skill,
            skill_id=decision.skill_id,
            score=decision.score,
            language=a.language,
            kind=a.kind,
            complexity=a.complexity,
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
    body = _decode(FeedbackIn, await c.request.body())
    embedder = c.runtime.turns.embedder
    async with c.db() as s:
        message = await queries.get_message(s, c.user_id, body.message_id)
        if message is not None and message.role == "assistant" and message.reply_to:
            message = await queries.get_message(s, c.user_id, message.reply_to)
        if message is None:
            raise _not_found("message")
        if await queries.get_assistant(s, c.user_id, body.assistant_id) is None:
            raise _not_found("assistant")
        text = message.text
    (vector,) = await embedder.embed([text])
    async with c.db() as s:
        created = False
        if body.skill_id is not None:
            skill = await queries.get_skill(s, c.user_id, body.skill_id)
            if skill is None or skill.assistant_id != body.assistant_id:
                raise _not_found("skill")
        else:
            skill = await queries.nearest_skill_of(
                s, body.assistant_id, vector, embedder=embedder.name
            )
        if skill is None:
            skill = Skill(
                assistant_id=body.assistant_id,
                owner_id=c.user_id,
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
            owner_id=c.user_id,
            source="feedback",
            text=text,
            embedding=vector,
            embedder=embedder.name,
        )
        s.add(example)
        await s.flush()
        return _json(
            FeedbackOut(skill_id=skill.id, example_id=example.id, created_skill=created), 201
        )


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Caller], Awaitable[Response]]
    summary: str
    body: type | None = None
    response: Any = None  # a type, list[type], or None for 204
    status: int = 200
    query: tuple[Query, ...] = ()
    # 404 for ids in the body too (not only in the path): an assistant, conversation...
    body_ids: bool = False


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
    ),
    Endpoint("GET", "/skills/{skill_id}", get_skill, "Get a skill", None, SkillOut),
    Endpoint(
        "PATCH",
        "/skills/{skill_id}",
        update_skill,
        "Update a skill (re-embeds a new description)",
        SkillPatch,
        SkillOut,
    ),
    Endpoint("DELETE", "/skills/{skill_id}", delete_skill, "Delete a skill", None, None, 204),
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
        "A page of history (?before_seq, ?limit)",
        None,
        MessagePage,
        query=(BEFORE_SEQ, MESSAGES_LIMIT),
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


def _endpoint(handlers: dict[str, Endpoint]) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = handlers[request.method]
        try:
            return await endpoint.handler(await _caller(request))
        except ApiError as exc:
            return _json(exc.body, exc.status)
        except ChatError as exc:  # the domain's errors, mapped once (chat_server.errors)
            return _json(ErrorOut(error=exc.code.value, message=exc.message), HTTP_STATUS[exc.code])

    return serve


def routes() -> list[Route]:
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    built = [
        Route(PREFIX + path, _endpoint(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]
    built.append(Route(PREFIX + "/openapi.json", _openapi, methods=["GET"]))
    return built


async def _openapi(request: Request) -> Response:
    return Response(orjson.dumps(openapi()), media_type="application/json")


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from ENDPOINTS and the msgspec types."""
    types: list[Any] = [ErrorOut]
    for e in ENDPOINTS:
        types += [t for t in (e.body, e.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(repr, types), schemas, strict=True))
    error = {"content": {"application/json": {"schema": schema_of[repr(ErrorOut)]}}}
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        path_ids = re.findall(r"{(\w+)}", e.path)
        responses: dict[str, Any] = {
            "401": {"description": "missing or invalid bearer token", **error}
        }
        if e.body is not None:
            responses["400"] = {"description": "the body is not JSON", **error}
        if path_ids or e.body_ids:
            responses["404"] = {"description": "unknown id, or another user's", **error}
        if e.body is not None or e.query:
            invalid = "invalid body or query" if e.body and e.query else "invalid body"
            responses["422"] = {
                "description": invalid if e.body else "invalid query parameter",
                **error,
            }
        operation: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__,
            "parameters": [
                {
                    "name": p,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "an id (uuid); anything else is 404",
                }
                for p in path_ids
            ]
            + [
                {"name": q.name, "in": "query", "description": q.description, "schema": q.schema()}
                for q in e.query
            ],
            "responses": responses,
        }
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[repr(e.body)]}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if e.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[repr(e.response)]}}
        operation["responses"][str(e.status)] = ok
        paths.setdefault(PREFIX + e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "chat-server REST API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
