"""Stored rows and router decisions as wire types: where storage meets the protocol,
in one place for the WebSocket session, the turns and the REST API."""

from __future__ import annotations

from typing import Any

import msgspec

from chat_server import router
from chat_server.storage.models import Conversation
from chat_server.storage.models import Message as MessageRow
from protocol.errors import RETRYABLE, ErrorCode
from protocol.messages import (
    ConversationInfo,
    ConversationUpdated,
    Error,
    FinishReason,
    MessageInfo,
    MessageStatus,
    Role,
    RouteInfo,
    ToolCallInfo,
)


def message_info(row: MessageRow, alternative: int = 1, alternatives: int = 1) -> MessageInfo:
    """A stored message, with its place among its alternatives (see ``Placed``)."""
    meta = row.meta or {}
    finish = meta.get("finish_reason")
    return MessageInfo(
        id=row.id,
        seq=row.seq,
        role=Role(row.role),
        text=row.text,
        status=MessageStatus(row.status),
        created_at=row.created_at.isoformat(),
        client_id=row.client_id,
        reply_to=row.reply_to,
        assistant_id=row.assistant_id,
        model=meta.get("model"),
        finish_reason=FinishReason(finish) if finish else None,
        parent_id=row.parent_id,
        alternative=alternative,
        alternatives=alternatives,
        tools=msgspec.convert(meta.get("tools") or [], list[ToolCallInfo]),  # tool calls
    )


def conversation_info(row: Conversation) -> ConversationInfo:
    return ConversationInfo(
        id=row.id,
        title=row.title,
        assistant_id=row.default_assistant_id,
        last_seq=row.last_seq,
        leaf_id=row.leaf_id,
    )


def conversation_updated(row: Conversation) -> ConversationUpdated:
    """The event that tells every device of a conversation it changed (title, branch)."""
    return ConversationUpdated(conversation_id=row.id, conversation=conversation_info(row))


def route_info(decision: router.Decision) -> RouteInfo:
    analysis = decision.analysis
    return RouteInfo(
        reason=decision.reason,
        skill=decision.skill,
        skill_id=decision.skill_id,
        score=decision.score,
        confidence=decision.confidence,
        language=analysis.language,
        kind=analysis.kind,
        complexity=analysis.complexity,
        thinking_budget=decision.thinking_budget,
        why=decision.why,
    )


def error_frame(
    code: ErrorCode, message: str, request_id: str | None, retry_after_ms: int | None = None
) -> Error:
    """The ``error`` frame for a code: retryable or not from ``RETRYABLE``."""
    return Error(
        id=request_id,
        code=code,
        message=message,
        retryable=RETRYABLE[code],
        retry_after_ms=retry_after_ms,
    )


def retry_after_header(retry_after_ms: int) -> str:
    """HTTP ``Retry-After`` (whole seconds, rounded up, at least 1) for a wait in ms."""
    return str(max(1, -(-retry_after_ms // 1000)))


def to_builtins(value: Any) -> Any:
    """A wire struct as plain JSON values, for a JSONB column."""
    return msgspec.to_builtins(value)
