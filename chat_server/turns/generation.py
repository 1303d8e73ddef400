"""One reply being generated on this replica, as an object that owns its task, its
text, its flusher and its shared state (the text so far that other replicas read).

A generation belongs to the server, not to the socket that asked for it: it runs to the
end whoever disconnects and always ends with exactly one final write and one
``turn_end`` (``Finals``). Nothing outside calls into its stream: ``cancel`` asks it to
stop, ``shared_lost`` tells it Redis forgot its state; it does the rest itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import router
from chat_server.config import Settings
from chat_server.hub import Hub
from chat_server.inflight import Inflight
from chat_server.llm import (
    ChatTurn,
    FunctionCall,
    FunctionResult,
    LLMError,
    LLMProvider,
    LLMRequest,
)
from chat_server.metrics import Metrics
from chat_server.storage import queries
from chat_server.storage.models import Message as MessageRow
from chat_server.tools import Webhooks
from chat_server.turns import quota
from chat_server.turns.final import Finals
from chat_server.turns.history import chat_turns
from chat_server.turns.toolbox import ToolBox
from protocol import encode
from protocol.errors import ErrorCode
from protocol.messages import (
    Delta,
    ErrorInfo,
    FinishReason,
    Message,
    MessageInfo,
    Thought,
    TurnStart,
    Usage,
)

# The logger operators filter on for the one line per turn; stable across refactors.
log = logging.getLogger("chat_server.turns")


@dataclass(frozen=True, slots=True)
class Context:
    """What every generation of this replica shares."""

    db: async_sessionmaker[AsyncSession]
    hub: Hub
    inflight: Inflight
    llm: LLMProvider
    settings: Settings
    finals: Finals
    metrics: Metrics
    webhooks: Webhooks | None = None  # tools' calls to the users' backends


class QuotaReached(Exception):
    """The owner's daily token quota ran out mid-reply."""

    def __init__(self, usage: Usage, reset_ms: int) -> None:
        super().__init__("daily token quota reached")
        self.usage = usage
        self.reset_ms = reset_ms


class GenerationState(enum.Enum):
    STREAMING = "streaming"
    FINISHING = "finishing"  # writing the final text; cancel no longer applies


class Generation:
    def __init__(
        self,
        ctx: Context,
        start: TurnStart,
        *,
        system_prompt: str,
        history: list[ChatTurn] | None,
        window: list[MessageRow] | None = None,
        token_budget: int | None = None,
        tools: ToolBox | None = None,
        owner_id: uuid.UUID | None = None,
        visited: tuple[uuid.UUID, ...] = (),
    ) -> None:
        self._token_budget = token_budget  # tokens the owner may still spend today
        self._ctx = ctx
        self.start = start
        self._system_prompt = system_prompt
        self._history = history  # prepared ahead; else made from the window
        self._window = window  # the stored messages the model reads; else read when needed
        self.tools = tools or ToolBox(
            hub=ctx.hub, webhooks=None, conversation_id=start.conversation_id, turn_id=start.turn_id
        )
        self.owner_id = owner_id
        # Assistants that answered this user turn before (handoffs): never handed to again.
        self.visited = (*visited, start.assistant.id)
        self.state = GenerationState.STREAMING
        self.text = ""
        self._pending = ""  # generated, not yet shared and published
        self._published = 0  # characters shared and published so far
        # False after a write to the shared state failed, or when Redis lost it: the next
        # flush writes the whole text again instead of appending.
        self._shared_ok = True
        self._flusher: asyncio.Task[None] | None = None
        self._cancelled = False
        self._heard_chars: int | None = None  # set by a cancel with heard_chars
        self.task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()  # set once ``task`` exists
        self._started_at = time.monotonic()
        self.received_at = self._started_at  # when its turn arrived (set by submit)
        self._first_token_at: float | None = None

    @property
    def turn_id(self) -> uuid.UUID:
        return self.start.turn_id

    @property
    def conversation_id(self) -> uuid.UUID:
        return self.start.conversation_id

    async def begin(
        self, user_message: MessageInfo | None, on_done: Callable[[Generation], None]
    ) -> None:
        """Take the lease, announce the stored user message (None: it is not new, as for
        a regenerate) and the reply, then generate in the background; ``on_done`` runs
        once the reply is stored."""
        ctx = self._ctx
        await ctx.inflight.begin(
            self.turn_id, self.conversation_id, encode(self.start), ctx.settings.node_id
        )
        if user_message is not None:
            await ctx.hub.publish(
                Message(
                    conversation_id=self.conversation_id,
                    seq=user_message.seq,
                    message=user_message,
                )
            )
        await ctx.hub.publish(self.start)
        self.task = asyncio.create_task(self._run(on_done), name=f"turn-{self.turn_id}")
        self.started.set()

    def cancel(self, heard_chars: int | None) -> None:
        """Stop streaming; keep the text (only ``heard_chars`` of it, if given)."""
        if self._cancelled or self.state is not GenerationState.STREAMING:
            return
        self._cancelled = True
        self._heard_chars = heard_chars
        if self.task is not None:
            self.task.cancel()

    def shared_lost(self) -> None:
        """Redis lost this reply's shared state (it restarted empty): write it again."""
        if self.state is not GenerationState.STREAMING:
            return
        log.warning("shared state of turn %s was lost (Redis restarted?); restoring", self.turn_id)
        self._shared_ok = False
        self._kick_flusher()

    # ------------------------------------------------------------------ the task

    async def _run(self, on_done: Callable[[Generation], None]) -> None:
        finish = FinishReason.ERROR
        usage = Usage()
        error: ErrorInfo | None = None
        shutting_down = False
        try:
            finish, usage = await self._generate()
        except LLMError as exc:
            error = ErrorInfo(
                code=exc.code,
                message=exc.message,
                retryable=exc.code != ErrorCode.LLM_REJECTED,
                retry_after_ms=exc.retry_after_ms,
            )
        except QuotaReached as exc:
            finish, usage = FinishReason.QUOTA, exc.usage
            error = ErrorInfo(
                code=ErrorCode.QUOTA_EXCEEDED,
                message="the daily token quota ran out during this reply",
                retryable=False,
                retry_after_ms=exc.reset_ms,
            )
        except TimeoutError:
            error = ErrorInfo(
                code=ErrorCode.LLM_UNAVAILABLE,
                message=f"model sent nothing for {self._ctx.settings.llm_stall_s:g}s",
                retryable=True,
            )
        except asyncio.CancelledError:
            if self._cancelled:
                finish = (
                    FinishReason.INTERRUPTED
                    if self._heard_chars is not None
                    else FinishReason.CANCELLED
                )
            else:
                shutting_down = True
                error = ErrorInfo(
                    code=ErrorCode.INTERNAL, message="server shut down", retryable=True
                )
        except Exception:
            log.exception("generation of turn %s failed", self.turn_id)
            error = ErrorInfo(code=ErrorCode.INTERNAL, message="generation failed", retryable=True)
        try:
            await self._finish(finish, usage, error)
        finally:
            on_done(self)
            self._log(finish, usage, error)
        if shutting_down:
            raise asyncio.CancelledError

    async def _generate(self) -> tuple[FinishReason, Usage]:
        """Stream the reply; when the model calls tools, run them and stream on with
        their results, up to ``TOOL_ROUNDS`` times. A handoff ends the reply."""
        ctx, settings = self._ctx, self._ctx.settings
        history = self._history
        if history is None:
            if self._window is None:
                async with ctx.db.begin() as s:
                    self._window = await queries.context_window(  # the branch up to its turn
                        s,
                        self.conversation_id,
                        tip=self.start.reply_to,
                        limit=settings.history_messages,
                    )
            history = chat_turns(self._window)
        history = router.fit_history(history, settings.history_tokens)
        spent = Usage()
        offered = self.tools.declarations()
        for round_ in range(settings.tool_rounds + 1):
            request = LLMRequest(
                model=self.start.model,
                system_prompt=self._system_prompt,
                history=history,
                max_output_tokens=settings.max_output_tokens,
                thinking_budget=self.start.route.thinking_budget,
                include_thoughts=True,  # thought events; only asking devices get them
                tools=offered,
            )
            said = len(self.text)
            finish, spent, calls = await self._stream(request, spent)
            if not calls or finish is not FinishReason.STOP:
                return finish, spent
            if round_ == settings.tool_rounds:
                raise LLMError(
                    ErrorCode.LLM_UNAVAILABLE,
                    f"the model still called tools after {settings.tool_rounds} rounds",
                )
            calls = self.tools.named(calls)
            await self._drain()  # the text before the calls goes out first
            outcomes = await self.tools.run(calls, len(self.text))
            if self.tools.handoff is not None:
                return FinishReason.HANDOFF, spent
            results = tuple(
                FunctionResult(call.id, call.name, outcome.response())
                for call, outcome in zip(calls, outcomes, strict=True)
            )
            history = [
                *history,
                ChatTurn("model", self.text[said:], calls=tuple(calls)),
                ChatTurn("user", "", results=results),
            ]
        raise AssertionError("unreachable")

    async def _stream(
        self, request: LLMRequest, before: Usage
    ) -> tuple[FinishReason, Usage, list[FunctionCall]]:
        """One model request: its text into the reply, its thoughts as events; returns
        its finish, the usage so far (``before`` plus this request's) and its calls."""
        ctx, settings = self._ctx, self._ctx.settings
        thought_chars = 0
        usage = Usage(
            input_tokens=before.input_tokens,
            output_tokens=before.output_tokens,
            thought_tokens=before.thought_tokens,
        )
        calls: list[FunctionCall] = []
        ctx.metrics.model_requests_c.inc()
        requested = time.monotonic()
        stream = ctx.llm.stream(request)
        # Before the first chunk the provider may retry (a 429) and back off: that wait
        # is not a stall, and must not turn a rate limit into llm_unavailable.
        bound = settings.llm_stall_s + ctx.llm.retry_budget_s
        try:
            while True:
                try:
                    async with asyncio.timeout(bound):
                        chunk = await anext(stream)
                    bound = settings.llm_stall_s
                except StopAsyncIteration:
                    raise LLMError(
                        ErrorCode.LLM_UNAVAILABLE, "model stream ended without a finish reason"
                    ) from None
                if chunk.input_tokens is not None:
                    usage.input_tokens = before.input_tokens + chunk.input_tokens
                if chunk.output_tokens is not None:
                    usage.output_tokens = before.output_tokens + chunk.output_tokens
                if chunk.thought_tokens is not None:
                    usage.thought_tokens = before.thought_tokens + chunk.thought_tokens
                self._check_budget(usage)
                calls.extend(chunk.calls)
                if chunk.thought:
                    await ctx.hub.publish(
                        Thought(
                            conversation_id=self.conversation_id,
                            turn_id=self.turn_id,
                            offset=thought_chars,
                            text=chunk.thought,
                        )
                    )
                    thought_chars += len(chunk.thought)
                if chunk.text:
                    if self._first_token_at is None:
                        self._first_token_at = now = time.monotonic()
                        ctx.metrics.model_ttft_c.observe(now - requested)
                        ctx.metrics.send_to_first_delta_c.observe(now - self.received_at)
                    # Postgres refuses NUL in text; U+FFFD keeps the length, so every
                    # device and the stored reply agree on offsets.
                    piece = chunk.text.replace("\x00", "\ufffd")
                    self.text += piece
                    self._pending += piece
                    self._kick_flusher()
                if chunk.finish_reason is not None:
                    # Let the upstream response end on its own so its connection is
                    # released in this task, not finalized later by the garbage collector.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            async for _ in stream:
                                pass
                    return FinishReason(chunk.finish_reason), usage, calls
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _drain(self) -> None:
        """Wait until the text so far is shared and published."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)

    def _check_budget(self, usage: Usage) -> None:
        """Stop when the owner's tokens of the day would run out: the reported usage, or
        while streaming an estimate from the text (about 4 characters a token)."""
        if self._token_budget is None:
            return
        output = max(usage.output_tokens, len(self.text) // 4)
        if usage.input_tokens + output + usage.thought_tokens >= self._token_budget:
            spent = Usage(
                input_tokens=usage.input_tokens,
                output_tokens=output,
                thought_tokens=usage.thought_tokens,
            )
            raise QuotaReached(spent, quota.reset_ms())

    # ------------------------------------------------------------------ sharing the text

    def _kick_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Share and publish what the model generated, as one delta per round trip.

        While a delta is on its way (the shared-text write and the publish each wait for
        Redis), the tokens that arrive meanwhile queue up in ``_pending`` and leave
        together as the next delta. A model slower than a round trip gets every chunk
        relayed on its own; a faster one (or a loaded Redis) gets fewer, larger deltas,
        identical on every replica since local devices receive the same delta events.
        """
        while self._pending or not self._shared_ok:
            text, self._pending = self._pending, ""
            offset = self._published
            self._published += len(text)
            shared = await self._share(text)
            if text:
                await self._ctx.hub.publish(
                    Delta(
                        conversation_id=self.conversation_id,
                        turn_id=self.turn_id,
                        offset=offset,
                        text=text,
                    )
                )
            if not shared and not self._pending:
                return  # Redis is away: the next renewal or chunk tries again

    async def _share(self, text: str) -> bool:
        """Write the reply's new text to the shared state; False if that failed.

        Shared text is written before the delta is published, so a device repairing a
        gap always finds the text it saw a delta for. After a failed write (or when Redis
        lost the state) the next write is the whole text so far, never an append after
        a hole: the shared copy is always a true prefix of the reply."""
        inflight = self._ctx.inflight
        try:
            if self._shared_ok:
                await inflight.append(self.turn_id, text)
            else:
                await inflight.restore(
                    self.turn_id,
                    self.conversation_id,
                    encode(self.start),
                    self._ctx.settings.node_id,
                    self.text[: self._published],
                )
                self._shared_ok = True
                log.info("shared text of turn %s restored", self.turn_id)
            return True
        except Exception:
            if self._shared_ok:
                log.warning("shared text of turn %s is stale until Redis is back", self.turn_id)
            self._shared_ok = False
            return False

    # ------------------------------------------------------------------ the end

    async def _finish(self, finish: FinishReason, usage: Usage, error: ErrorInfo | None) -> None:
        self.state = GenerationState.FINISHING
        await self._drain()  # every delta goes out before the turn_end
        text = self.text
        if finish is FinishReason.INTERRUPTED and self._heard_chars is not None:
            text = text[: self._heard_chars]
        await self._ctx.finals.store_end(
            self.conversation_id,
            self.turn_id,
            text,
            finish,
            usage,
            error,
            self.tools.record(),
            window=self._window,
        )

    def _log(self, finish: FinishReason, usage: Usage, error: ErrorInfo | None) -> None:
        """The one line per turn an operator reads: what it did, never what it said."""
        started, first = self._started_at, self._first_token_at
        fields = {
            "conversation": self.conversation_id,
            "turn": self.turn_id,
            "assistant": self.start.assistant.id,
            "route": self.start.route.reason,
            "model": self.start.model,
            "ttft_ms": round((first - started) * 1000) if first is not None else None,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "chars": len(self.text),
            "duration_ms": round((time.monotonic() - started) * 1000),
            "finish": finish.value,
            "error": error.code if error is not None else None,
        }
        log.info("turn", extra={"fields": fields})
        metrics = self._ctx.metrics
        metrics.turns_ended.labels(metrics.replica, finish.value).inc()
        metrics.turn_duration_c.observe(time.monotonic() - started)
        if error is not None and error.code != "internal":
            metrics.model_errors.labels(metrics.replica, error.code).inc()
