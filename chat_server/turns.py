"""Turns: store a user turn, run its generation, finish the reply. Owns running replies.

A generation belongs to the server, not to the socket that asked for it: it runs to
the end whoever disconnects, keeps its text so far (for devices that join mid-stream),
and always ends with exactly one ``turn_end`` and one final write of the reply.
It never talks to a socket; everything goes out through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import router
from chat_server.config import Settings
from chat_server.hub import Hub
from chat_server.llm import ChatTurn, LLMError, LLMProvider, LLMRequest
from chat_server.storage import queries
from chat_server.storage.models import Message as MessageRow
from protocol.errors import ErrorCode, ErrorReply
from protocol.messages import (
    AssistantRef,
    Delta,
    ErrorInfo,
    FinishReason,
    Message,
    MessageInfo,
    MessageStatus,
    Role,
    RouteInfo,
    TurnEnd,
    TurnStart,
    Usage,
)

log = logging.getLogger(__name__)


def message_info(row: MessageRow) -> MessageInfo:
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
    )


class TurnState(enum.Enum):
    STREAMING = "streaming"
    FINISHING = "finishing"  # writing the final text; cancel no longer applies


@dataclass(eq=False)
class ActiveTurn:
    conversation_id: uuid.UUID
    start: TurnStart
    system_prompt: str
    user_seq: int
    text: str = ""
    state: TurnState = TurnState.STREAMING
    heard_chars: int | None = None  # set by a cancel with heard_chars
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def turn_id(self) -> uuid.UUID:
        return self.start.turn_id


class Turns:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        hub: Hub,
        llm: LLMProvider,
        settings: Settings,
    ) -> None:
        self._db = db
        self._hub = hub
        self._llm = llm
        self._settings = settings
        self._active: dict[uuid.UUID, ActiveTurn] = {}

    # ------------------------------------------------------------------ submit

    async def store(
        self,
        *,
        owner_id: uuid.UUID,
        conversation_id: uuid.UUID,
        client_id: str,
        text: str,
        assistant_id: uuid.UUID | None,
    ) -> tuple[queries.StoredTurn, ActiveTurn | None]:
        """Route and commit a user turn. The caller acks, then calls ``start``."""
        if len(text) > self._settings.max_text_chars:
            raise ErrorReply(
                ErrorCode.TEXT_TOO_LONG,
                f"text is {len(text)} characters; the limit is {self._settings.max_text_chars}",
            )
        if not text.strip():
            raise ErrorReply(ErrorCode.BAD_MESSAGE, "text must not be empty")
        async with self._db.begin() as s:
            conversation = await queries.get_conversation(s, owner_id, conversation_id)
            if conversation is None:
                raise ErrorReply(ErrorCode.NOT_FOUND, f"conversation {conversation_id} not found")
            decision = await router.route(
                s,
                owner_id=owner_id,
                default_assistant_id=conversation.default_assistant_id,
                explicit_assistant_id=assistant_id,
            )
            route = RouteInfo(reason=decision.reason, skill=decision.skill, score=decision.score)
            stored = await queries.store_turn(
                s,
                conversation_id,
                client_id=client_id,
                text=text,
                assistant_id=decision.assistant.id,
                reply_meta={"model": decision.model, "route": _builtins(route)},
            )
        if stored.reply is None:
            return stored, None
        start = TurnStart(
            conversation_id=conversation_id,
            seq=stored.reply.seq,
            turn_id=stored.reply.id,
            reply_to=stored.user_message.id,
            assistant=AssistantRef(id=decision.assistant.id, name=decision.assistant.name),
            model=decision.model,
            route=route,
        )
        turn = ActiveTurn(
            conversation_id=conversation_id,
            start=start,
            system_prompt=decision.assistant.system_prompt,
            user_seq=stored.user_message.seq,
        )
        return stored, turn

    async def start(self, stored: queries.StoredTurn, turn: ActiveTurn) -> None:
        """Announce the stored user message and the reply, then generate in the background."""
        self._active[turn.turn_id] = turn
        await self._hub.publish(
            Message(
                conversation_id=turn.conversation_id,
                seq=stored.user_message.seq,
                message=message_info(stored.user_message),
            )
        )
        await self._hub.publish(turn.start)
        turn.task = asyncio.create_task(self._run(turn), name=f"turn-{turn.turn_id}")

    # ------------------------------------------------------------------ queries

    def active_in(self, conversation_id: uuid.UUID) -> Iterator[ActiveTurn]:
        """Replies streaming in a conversation, oldest first (for joins mid-stream)."""
        for turn in self._active.values():
            if turn.conversation_id == conversation_id and turn.state is TurnState.STREAMING:
                yield turn

    # ------------------------------------------------------------------ cancel

    def cancel(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID | None, heard_chars: int | None
    ) -> ActiveTurn:
        """Stop a streaming reply (the newest if no ``turn_id``); its task stores the rest."""
        candidates = [
            t
            for t in self.active_in(conversation_id)
            if (turn_id is None or t.turn_id == turn_id) and not t.cancel_requested
        ]
        if not candidates:
            raise ErrorReply(ErrorCode.NO_ACTIVE_TURN, "no reply is streaming to cancel")
        turn = candidates[-1]
        turn.cancel_requested = True
        turn.heard_chars = heard_chars
        if turn.task is not None:
            turn.task.cancel()
        return turn

    async def shutdown(self) -> None:
        """Stop every generation; each stores its partial text as an error."""
        tasks = [t.task for t in self._active.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def finish_orphans(self) -> int:
        """Replies left streaming by a previous run of this (single) node end as errors."""
        async with self._db.begin() as s:
            rows = await queries.streaming_replies(s)
            for row in rows:
                await queries.finish_reply(
                    s,
                    row.id,
                    text=row.text,
                    status=MessageStatus.ERROR,
                    meta={
                        "finish_reason": FinishReason.ERROR,
                        "error": {"code": ErrorCode.INTERNAL, "message": "server restarted"},
                    },
                )
        return len(rows)

    # ------------------------------------------------------------------ generation

    async def _run(self, turn: ActiveTurn) -> None:
        finish = FinishReason.ERROR
        usage = Usage()
        error: ErrorInfo | None = None
        shutting_down = False
        try:
            finish, usage = await self._generate(turn)
        except LLMError as exc:
            error = ErrorInfo(code=exc.code, message=exc.message, retryable=True)
            if exc.code == ErrorCode.LLM_REJECTED:
                error.retryable = False
        except TimeoutError:
            error = ErrorInfo(
                code=ErrorCode.LLM_UNAVAILABLE,
                message=f"model sent nothing for {self._settings.llm_stall_s:g}s",
                retryable=True,
            )
        except asyncio.CancelledError:
            if turn.cancel_requested:
                finish = (
                    FinishReason.INTERRUPTED
                    if turn.heard_chars is not None
                    else FinishReason.CANCELLED
                )
            else:
                shutting_down = True
                error = ErrorInfo(
                    code=ErrorCode.INTERNAL, message="server shut down", retryable=True
                )
        except Exception:
            log.exception("generation of turn %s failed", turn.turn_id)
            error = ErrorInfo(code=ErrorCode.INTERNAL, message="generation failed", retryable=True)
        try:
            await self._finish(turn, finish, usage, error)
        finally:
            self._active.pop(turn.turn_id, None)
        if shutting_down:
            raise asyncio.CancelledError

    async def _generate(self, turn: ActiveTurn) -> tuple[FinishReason, Usage]:
        async with self._db.begin() as s:
            rows = await queries.context_window(
                s,
                turn.conversation_id,
                before_seq=turn.user_seq + 1,
                limit=self._settings.history_messages,
            )
        request = LLMRequest(
            model=turn.start.model,
            system_prompt=turn.system_prompt,
            history=[ChatTurn("user" if r.role == "user" else "model", r.text) for r in rows],
            max_output_tokens=self._settings.max_output_tokens,
        )
        usage = Usage()
        stream = self._llm.stream(request)
        try:
            while True:
                try:
                    async with asyncio.timeout(self._settings.llm_stall_s):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    raise LLMError(
                        ErrorCode.LLM_UNAVAILABLE, "model stream ended without a finish reason"
                    ) from None
                if chunk.input_tokens is not None:
                    usage.input_tokens = chunk.input_tokens
                if chunk.output_tokens is not None:
                    usage.output_tokens = chunk.output_tokens
                if chunk.text:
                    offset = len(turn.text)
                    turn.text += chunk.text
                    await self._hub.publish(
                        Delta(
                            conversation_id=turn.conversation_id,
                            turn_id=turn.turn_id,
                            offset=offset,
                            text=chunk.text,
                        )
                    )
                if chunk.finish_reason is not None:
                    # Let the upstream response end on its own so its connection is
                    # released in this task, not finalized later by the garbage collector.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            async for _ in stream:
                                pass
                    return FinishReason(chunk.finish_reason), usage
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _finish(
        self,
        turn: ActiveTurn,
        finish: FinishReason,
        usage: Usage,
        error: ErrorInfo | None,
    ) -> None:
        turn.state = TurnState.FINISHING
        text = turn.text
        if finish is FinishReason.INTERRUPTED and turn.heard_chars is not None:
            text = text[: turn.heard_chars]
        status = {
            FinishReason.STOP: MessageStatus.COMPLETE,
            FinishReason.LENGTH: MessageStatus.COMPLETE,
            FinishReason.SAFETY: MessageStatus.COMPLETE,
            FinishReason.CANCELLED: MessageStatus.INTERRUPTED,
            FinishReason.INTERRUPTED: MessageStatus.INTERRUPTED,
        }.get(finish, MessageStatus.ERROR)
        meta: dict[str, Any] = {"finish_reason": finish, "usage": _builtins(usage)}
        if error is not None:
            meta["error"] = _builtins(error)
        async with self._db.begin() as s:
            row = await queries.finish_reply(s, turn.turn_id, text=text, status=status, meta=meta)
        if row is None:  # already finished elsewhere; its turn_end went out then
            return
        await self._hub.publish(
            TurnEnd(
                conversation_id=turn.conversation_id,
                seq=row.seq,
                turn_id=turn.turn_id,
                message=message_info(row),
                finish_reason=finish,
                usage=usage,
                error=error,
            )
        )


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)
