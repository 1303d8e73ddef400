"""REST for tools: ``/assistants/{id}/tools`` and ``/tools/{id}`` (joined into the API's
endpoint table by ``chat_server.api``)."""

from __future__ import annotations

import secrets
import uuid

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from chat_server import tools
from chat_server.api_schema import ToolIn, ToolOut, ToolPatch
from chat_server.rest import (
    ApiError,
    Caller,
    Endpoint,
    apply_patch,
    decode_body,
    owned_row,
    respond,
)
from chat_server.storage import teams
from chat_server.storage.models import Tool


def _out(t: Tool) -> ToolOut:
    return ToolOut(
        id=t.id,
        assistant_id=t.assistant_id,
        name=t.name,
        description=t.description,
        parameters=t.parameters,
        url=t.url,
        secret=t.secret,
        timeout_ms=t.timeout_ms,
        idempotent=t.idempotent,
        max_result_bytes=t.max_result_bytes,
        created_at=t.created_at,
    )


def _invalid(message: str) -> ApiError:
    return ApiError(422, "bad_message", message)


async def _check(s: AsyncSession, c: Caller, tool: Tool) -> None:
    """What the body's types cannot say: the URL is allowed, the schema is one, the name
    is the assistant's only tool of that name."""
    allowlist = tools.parse_allowlist(c.runtime.settings.tool_url_allowlist)
    if not tools.allowed(tool.url, allowlist):
        raise _invalid(f"url {tool.url} is not under TOOL_URL_ALLOWLIST")
    problem = tools.schema_problem(tool.parameters)
    if problem is not None:
        raise _invalid(f"parameters: {problem}")
    clash = await s.scalar(
        select(Tool.id).where(
            Tool.assistant_id == tool.assistant_id, Tool.name == tool.name, Tool.id != tool.id
        )
    )
    if clash is not None:
        raise _invalid(f"the assistant already has a tool named {tool.name}")


async def list_tools(c: Caller) -> Response:
    async with c.db() as s:
        assistant = await owned_row(s, c, "assistant", teams.get_assistant)
        return respond([_out(t) for t in await teams.tools_of(s, assistant.id)])


async def create_tool(c: Caller) -> Response:
    body = decode_body(ToolIn, await c.request.body())
    async with c.db() as s:
        assistant = await owned_row(s, c, "assistant", teams.get_assistant)
        tool = Tool(
            id=uuid.uuid4(),
            assistant_id=assistant.id,
            owner_id=c.user_id,
            secret=secrets.token_urlsafe(32),
            **msgspec.structs.asdict(body),
        )
        await _check(s, c, tool)
        s.add(tool)
        await s.flush()
        await s.refresh(tool)
        return respond(_out(tool), 201)


async def _own_tool(s: AsyncSession, c: Caller) -> Tool:
    return await owned_row(s, c, "tool", teams.get_tool)


async def get_tool(c: Caller) -> Response:
    async with c.db() as s:
        return respond(_out(await _own_tool(s, c)))


async def update_tool(c: Caller) -> Response:
    body = decode_body(ToolPatch, await c.request.body())
    async with c.db() as s:
        tool = await _own_tool(s, c)
        apply_patch(tool, body)
        await _check(s, c, tool)
        await s.flush()
        return respond(_out(tool))


async def delete_tool(c: Caller) -> Response:
    async with c.db() as s:
        await s.delete(await _own_tool(s, c))
    return Response(status_code=204)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/assistants/{assistant_id}/tools",
        list_tools,
        "List an assistant's tools",
        None,
        list[ToolOut],
    ),
    Endpoint(
        "POST",
        "/assistants/{assistant_id}/tools",
        create_tool,
        "Give an assistant a tool (a webhook under TOOL_URL_ALLOWLIST)",
        ToolIn,
        ToolOut,
        201,
    ),
    Endpoint("GET", "/tools/{tool_id}", get_tool, "Get a tool", None, ToolOut),
    Endpoint("PATCH", "/tools/{tool_id}", update_tool, "Update a tool", ToolPatch, ToolOut),
    Endpoint("DELETE", "/tools/{tool_id}", delete_tool, "Delete a tool", None, None, 204),
]
