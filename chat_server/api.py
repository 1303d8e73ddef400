"""REST under ``/api/v1``: conversations and their history, and usage; the assistant
team (``api_team``) and tools (``tools.api``) join its one endpoint table.

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
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response
from starlette.routing import Route

from chat_server import api_team, conversations, rest
from chat_server.api_schema import (
    BranchIn,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    MessagePage,
    UsageOut,
)
from chat_server.rest import (
    ApiError,
    Caller,
    Endpoint,
    decode_body,
    path_id,
    respond,
)
from chat_server.storage import queries
from chat_server.storage.models import Conversation
from chat_server.tools import api as tools_api
from chat_server.turns import quota
from chat_server.wire import conversation_updated, message_info
from protocol.messages import MAX_SEQ

CONVERSATIONS_LIMIT = rest.Query("limit", "page size", 1, 100, 20)
CURSOR = rest.Query("cursor", "next_cursor of the previous page")
MESSAGES_LIMIT = rest.Query("limit", "page size", 1, 200, 50)
BEFORE_SEQ = rest.Query("before_seq", "only messages before this seq (older pages)", 1, MAX_SEQ)


# ---------------------------------------------------------------- converters


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
    *api_team.ENDPOINTS,
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
    *tools_api.ENDPOINTS,
]


def routes() -> list[Route]:
    return rest.routes(ENDPOINTS)


def openapi() -> dict[str, Any]:
    return rest.openapi(ENDPOINTS)
