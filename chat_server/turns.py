"""Turns: store a user turn, run its generation, finish the reply. Owns running replies.

A generation belongs to the server, not to the socket that asked for it: it runs to
the end whoever disconnects, keeps its text so far in the shared in-flight state (for
devices that join or repair mid-stream, on any replica), renews its lease there, and
always ends with exactly one ``turn_end`` and one final write of the reply. Every
replica sweeps for replies whose lease expired (their replica died) and ends them
with ``finish_reason:error``; the write is conditional, so only one sweeper wins.
A cancel reaches the replica running the turn through the bus's control channel.
It never talks to a socket; everything goes out through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import conversations, router
from chat_server.bus import Bus
from chat_server.config import Settings
from chat_server.errors import ChatError
from chat_server.hub import Event, Hub
from chat_server.inflight import Inflight
from chat_server.llm import ChatTurn, LLMError, LLMProvider, LLMRequest
from chat_server.router.embedding import Embedder
from chat_server.storage import queries
from chat_server.storage.models import Conversation
from chat_server.storage.models import Message as MessageRow
from protocol import decode_server, encode
from protocol.errors import ErrorCode
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

CONTROL_CHANNEL = "ctl:turns"


class CancelRequest(msgspec.Struct):
    turn_id: uuid.UUID
    heard_chars: int | None = None


_control_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(CancelRequest)


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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A turn worked out ahead (early routing, while a voice user is still speaking):
    the route and the model history, as of ``last_seq``."""

    conversation_id: uuid.UUID
    decision: router.Decision
    history: list[ChatTurn]
    last_seq: int


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
    # False after a write to the shared state failed, or when Redis lost it: the next
    # flush writes the whole text again instead of appending.
    shared_ok: bool = True
    history: list[ChatTurn] | None = None  # prepared ahead; else loaded when generating
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    pending: str = ""  # generated, not yet shared and published
    published: int = 0  # characters shared and published so far
    flusher: asyncio.Task[None] | None = field(default=None, repr=False)
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def turn_id(self) -> uuid.UUID:
        return self.start.turn_id


def _log_turn(
    turn: ActiveTurn, finish: FinishReason, usage: Usage, error: ErrorInfo | None
) -> None:
    """The one line per turn an operator reads: what it did, never what it said."""
    now = time.monotonic()
    ttft = turn.first_token_at - turn.started_at if turn.first_token_at is not None else None
    fields = {
        "conversation": turn.conversation_id,
        "turn": turn.turn_id,
        "assistant": turn.start.assistant.id,
        "route": turn.start.route.reason,
        "model": turn.start.model,
        "ttft_ms": round(ttft * 1000) if ttft is not None else None,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "chars": len(turn.text),
        "duration_ms": round((now - turn.started_at) * 1000),
        "finish": finish.value,
        "error": error.code if error is not None else None,
    }
    log.info("turn", extra={"fields": fields})


class Turns:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        hub: Hub,
        bus: Bus,
        inflight: Inflight,
        llm: LLMProvider,
        embedder: Embedder,
        settings: Settings,
    ) -> None:
        self._db = db
        self._hub = hub
        self._bus = bus
        self.inflight = inflight
        self._llm = llm
        self.embedder = embedder
        self._settings = settings
        self._active: dict[uuid.UUID, ActiveTurn] = {}
        # Replies the sweeper found without a lease, and when it first did.
        self._suspects: dict[uuid.UUID, float] = {}

    # ------------------------------------------------------------------ submit

    async def embed_turn(self, text: str) -> list[float] | None:
        """The turn's vector for skill matching; None (route without skills) on failure."""
        try:
            return (await self.embedder.embed([text]))[0]
        except Exception:
            log.warning("embedding failed; routing without skills", exc_info=True)
            return None

    async def prepare(
        self, *, owner_id: uuid.UUID, conversation_id: uuid.UUID, text: str
    ) -> Prepared:
        """Do ahead what a turn needs before its text is final: routing and history.
        While a reply is streaming the history is not final either: then only the
        route is prepared (``last_seq`` -1 makes ``store`` load the history)."""
        vector = await self.embed_turn(text)
        async with self._db.begin() as s:
            conversation, decision = await self._decide(
                s, owner_id, conversation_id, text, vector, None
            )
            rows = await queries.context_window(
                s,
                conversation_id,
                before_seq=conversation.last_seq + 1,
                limit=self._settings.history_messages - 1,
            )
        settled = not await self.inflight.active(conversation_id)
        last_seq = conversation.last_seq if settled else -1
        return Prepared(conversation_id, decision, _chat_turns(rows), last_seq)

    async def store(
        self,
        *,
        owner_id: uuid.UUID,
        conversation_id: uuid.UUID,
        client_id: str,
        text: str,
        assistant_id: uuid.UUID | None,
        prepared: Prepared | None = None,
    ) -> tuple[queries.StoredTurn, ActiveTurn | None]:
        """Route and commit a user turn. The caller acks, then calls ``start``.

        With ``prepared`` (and no explicit assistant) the route is not worked out again,
        and if nothing was stored in between, neither is the history."""
        if len(text) > self._settings.max_text_chars:
            raise ChatError(
                ErrorCode.TEXT_TOO_LONG,
                f"text is {len(text)} characters; the limit is {self._settings.max_text_chars}",
            )
        if not text.strip():
            raise ChatError(ErrorCode.BAD_MESSAGE, "text must not be empty")
        if assistant_id is not None or (prepared and prepared.conversation_id != conversation_id):
            prepared = None
        vector = None if prepared or assistant_id else await self.embed_turn(text)
        async with self._db.begin() as s:
            if prepared is not None:
                decision = prepared.decision  # the session joined it: ownership is known
            else:
                _, decision = await self._decide(
                    s, owner_id, conversation_id, text, vector, assistant_id
                )
            route = route_info(decision)
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
        if prepared is not None and prepared.last_seq == stored.user_message.seq - 1:
            turn.history = [*prepared.history, ChatTurn("user", text)]
        return stored, turn

    async def _decide(
        self,
        s: AsyncSession,
        owner_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        vector: list[float] | None,
        assistant_id: uuid.UUID | None,
    ) -> tuple[Conversation, router.Decision]:
        """The caller's conversation (else not_found) and the router's decision in it."""
        conversation, decision = await conversations.route(
            s,
            owner_id,
            conversation_id,
            text=text,
            vector=vector,
            embedder=self.embedder.name,
            assistant_id=assistant_id,
        )
        assert conversation is not None
        return conversation, decision

    async def start(self, stored: queries.StoredTurn, turn: ActiveTurn) -> None:
        """Announce the stored user message and the reply, then generate in the background."""
        self._active[turn.turn_id] = turn
        await self.inflight.begin(
            turn.turn_id, turn.conversation_id, encode(turn.start), self._settings.node_id
        )
        await self._hub.publish(
            Message(
                conversation_id=turn.conversation_id,
                seq=stored.user_message.seq,
                message=message_info(stored.user_message),
            )
        )
        await self._hub.publish(turn.start)
        turn.task = asyncio.create_task(self._run(turn), name=f"turn-{turn.turn_id}")

    # ------------------------------------------------------------------ cancel

    async def cancel(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID | None, heard_chars: int | None
    ) -> uuid.UUID:
        """Stop a streaming reply (the newest if no ``turn_id``), on whichever replica
        runs it; that replica stores what is kept and sends ``turn_end``."""
        running = await self.inflight.active(conversation_id)
        starts = [(decode_server(t.start), t) for t in running]
        candidates = [
            (start.seq, t)
            for start, t in starts
            if isinstance(start, TurnStart) and (turn_id is None or t.turn_id == turn_id)
        ]
        if not candidates:
            raise ChatError(ErrorCode.NO_ACTIVE_TURN, "no reply is streaming to cancel")
        target = max(candidates, key=lambda c: c[0])[1]
        local = self._active.get(target.turn_id)
        if local is not None:
            self._cancel_local(local, heard_chars)
        else:
            request = CancelRequest(turn_id=target.turn_id, heard_chars=heard_chars)
            await self._bus.publish(CONTROL_CHANNEL, _control_encoder.encode(request))
        return target.turn_id

    async def wait_finished(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID, timeout_s: float
    ) -> bool:
        """Wait until a reply's final text is stored (it may run on another replica):
        its task here, else its turn_end event through the hub, not by polling Redis."""
        local = self._active.get(turn_id)
        if local is not None and local.task is not None:
            done, _ = await asyncio.wait([local.task], timeout=timeout_s)
            return bool(done)
        waiter = _TurnEndWaiter(turn_id)
        await self._hub.join(conversation_id, waiter)
        try:
            # Listening first, then looking: a turn_end published in between is not missed.
            if await self.inflight.get(turn_id) is None:
                return True
            async with asyncio.timeout(timeout_s):
                await waiter.ended.wait()
            return True
        except TimeoutError:
            return False
        finally:
            await self._hub.leave(conversation_id, waiter)

    def _cancel_local(self, turn: ActiveTurn, heard_chars: int | None) -> None:
        if turn.cancel_requested or turn.state is not TurnState.STREAMING:
            return
        turn.cancel_requested = True
        turn.heard_chars = heard_chars
        if turn.task is not None:
            turn.task.cancel()

    def _on_control(self, payload: bytes) -> None:
        try:
            request = _control_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed control message")
            return
        turn = self._active.get(request.turn_id)
        if turn is not None:
            self._cancel_local(turn, request.heard_chars)

    # ------------------------------------------------------------------ liveness

    async def run(self) -> None:
        """Background duty of every replica: renew this replica's leases (every third
        of ``lease_ms``) and sweep for replies whose replica died (every half)."""
        await self._bus.subscribe(CONTROL_CHANNEL, self._on_control)
        tick = self._settings.lease_ms / 3000
        ticks = 0
        while True:
            await asyncio.sleep(tick)
            ticks += 1
            try:
                if self._active:
                    await self._renew()
                if ticks % 2 == 0:
                    await self.sweep()
            except Exception:  # Redis or Postgres away: try again next tick
                log.warning("lease renewal or sweep failed", exc_info=True)

    async def _renew(self) -> None:
        """Renew this replica's leases; write again the shared state Redis lost."""
        lost = await self.inflight.renew(list(self._active), self._settings.node_id)
        for turn_id in lost:
            turn = self._active.get(turn_id)
            if turn is None or turn.state is not TurnState.STREAMING:
                continue
            log.warning("shared state of turn %s was lost (Redis restarted?); restoring", turn_id)
            turn.shared_ok = False
            if turn.flusher is None or turn.flusher.done():
                turn.flusher = asyncio.create_task(self._flush(turn))

    async def sweep(self) -> int:
        """End replies left streaming by a replica that stopped renewing its lease.

        A lease seen missing is only a suspicion: Redis may have restarted empty, and
        the owner re-creates its leases within a third of ``lease_ms``. A reply is ended
        only when its lease is still missing ``lease_ms`` after it was first seen so."""
        async with self._db.begin() as s:
            rows = await queries.streaming_replies(s, older_than_ms=self._settings.lease_ms)
        now = time.monotonic()
        streaming = {row.id for row in rows}
        for gone in [t for t in self._suspects if t not in streaming]:
            del self._suspects[gone]
        ended = 0
        for row in rows:
            if row.id in self._active or await self.inflight.lease_alive(row.id):
                self._suspects.pop(row.id, None)
                continue
            first_seen = self._suspects.setdefault(row.id, now)
            if now - first_seen < self._settings.lease_ms / 1000:
                continue
            del self._suspects[row.id]
            state = await self.inflight.get(row.id)
            error = ErrorInfo(
                code=ErrorCode.LLM_UNAVAILABLE,
                message="the replica generating this reply stopped",
                retryable=True,
            )
            if await self._store_end(
                row.conversation_id,
                row.id,
                state.text if state else row.text,
                FinishReason.ERROR,
                Usage(),
                error,
                swept=True,
            ):
                ended += 1
                log.warning("ended reply %s of a lost replica", row.id)
        return ended

    async def drain(self, timeout_s: float) -> bool:
        """Wait for running generations to finish; True if all did in time."""
        tasks = [t.task for t in self._active.values() if t.task is not None]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def shutdown(self) -> None:
        """Stop every generation; each stores its partial text as an error."""
        tasks = [t.task for t in self._active.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ generation

    async def _run(self, turn: ActiveTurn) -> None:
        finish = FinishReason.ERROR
        usage = Usage()
        error: ErrorInfo | None = None
        shutting_down = False
        try:
            finish, usage = await self._generate(turn)
        except LLMError as exc:
            error = ErrorInfo(
                code=exc.code,
                message=exc.message,
                retryable=True,
                retry_after_ms=exc.retry_after_ms,
            )
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
            _log_turn(turn, finish, usage, error)
        if shutting_down:
            raise asyncio.CancelledError

    async def _generate(self, turn: ActiveTurn) -> tuple[FinishReason, Usage]:
        history = turn.history
        if history is None:
            async with self._db.begin() as s:
                rows = await queries.context_window(
                    s,
                    turn.conversation_id,
                    before_seq=turn.user_seq + 1,
                    limit=self._settings.history_messages,
                )
            history = _chat_turns(rows)
        request = LLMRequest(
            model=turn.start.model,
            system_prompt=turn.system_prompt,
            history=router.fit_history(history, self._settings.history_tokens),
            max_output_tokens=self._settings.max_output_tokens,
        )
        usage = Usage()
        stream = self._llm.stream(request)
        # Before the first chunk the provider may retry (a 429) and back off: that wait
        # is not a stall, and must not turn a rate limit into llm_unavailable.
        bound = self._settings.llm_stall_s + self._llm.retry_budget_s
        try:
            while True:
                try:
                    async with asyncio.timeout(bound):
                        chunk = await anext(stream)
                    bound = self._settings.llm_stall_s
                except StopAsyncIteration:
                    raise LLMError(
                        ErrorCode.LLM_UNAVAILABLE, "model stream ended without a finish reason"
                    ) from None
                if chunk.input_tokens is not None:
                    usage.input_tokens = chunk.input_tokens
                if chunk.output_tokens is not None:
                    usage.output_tokens = chunk.output_tokens
                if chunk.text:
                    if turn.first_token_at is None:
                        turn.first_token_at = time.monotonic()
                    # Postgres refuses NUL in text; U+FFFD keeps the length, so every
                    # device and the stored reply agree on offsets.
                    piece = chunk.text.replace("\x00", "\ufffd")
                    turn.text += piece
                    turn.pending += piece
                    if turn.flusher is None or turn.flusher.done():
                        turn.flusher = asyncio.create_task(self._flush(turn))
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

    async def _flush(self, turn: ActiveTurn) -> None:
        """Share and publish what the model generated, as one delta per round trip.

        While a delta is on its way (the shared-text write and the publish each wait for
        Redis), the tokens that arrive meanwhile queue up in ``pending`` and leave
        together as the next delta. A model slower than a round trip gets every chunk
        relayed on its own; a faster one (or a loaded Redis) gets fewer, larger deltas,
        identical on every replica since local devices receive the same delta events.
        """
        while turn.pending or not turn.shared_ok:
            text, turn.pending = turn.pending, ""
            offset = turn.published
            turn.published += len(text)
            shared = await self._share(turn, text)
            if text:
                await self._hub.publish(
                    Delta(
                        conversation_id=turn.conversation_id,
                        turn_id=turn.turn_id,
                        offset=offset,
                        text=text,
                    )
                )
            if not shared and not turn.pending:
                return  # Redis is away: the next renewal or chunk tries again

    async def _share(self, turn: ActiveTurn, text: str) -> bool:
        """Write the reply's new text to the shared state; False if that failed.

        Shared text is written before the delta is published, so a device repairing a
        gap always finds the text it saw a delta for. After a failed write (or when Redis
        lost the state) the next write is the whole text so far, never an append after
        a hole: the shared copy is always a true prefix of the reply."""
        try:
            if turn.shared_ok:
                await self.inflight.append(turn.turn_id, text)
            else:
                await self.inflight.restore(
                    turn.turn_id,
                    turn.conversation_id,
                    encode(turn.start),
                    self._settings.node_id,
                    turn.text[: turn.published],
                )
                turn.shared_ok = True
                log.info("shared text of turn %s restored", turn.turn_id)
            return True
        except Exception:
            if turn.shared_ok:
                log.warning("shared text of turn %s is stale until Redis is back", turn.turn_id)
            turn.shared_ok = False
            return False

    async def _finish(
        self,
        turn: ActiveTurn,
        finish: FinishReason,
        usage: Usage,
        error: ErrorInfo | None,
    ) -> None:
        turn.state = TurnState.FINISHING
        if turn.flusher is not None:  # every delta goes out before the turn_end
            with contextlib.suppress(Exception):
                await asyncio.shield(turn.flusher)
        text = turn.text
        if finish is FinishReason.INTERRUPTED and turn.heard_chars is not None:
            text = text[: turn.heard_chars]
        await self._store_end(turn.conversation_id, turn.turn_id, text, finish, usage, error)

    async def _store_end(
        self,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID,
        text: str,
        finish: FinishReason,
        usage: Usage,
        error: ErrorInfo | None,
        *,
        swept: bool = False,
    ) -> bool:
        """Write the final reply, announce it, forget it.

        The first writer wins, except that the generating replica's own write replaces
        a sweeper's with less text (a sweeper that judged a live reply dead): a stored
        reply is never shorter than what devices were shown. The write is retried until
        Postgres takes it, so a reply never stays ``streaming``; meanwhile the turn is
        still this replica's and its lease is renewed."""
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
        row = await self._write_final(turn_id, text, status, meta, swept=swept)
        if row is not None:  # else already finished elsewhere; its turn_end went out then
            await self._hub.publish(
                TurnEnd(
                    conversation_id=conversation_id,
                    seq=row.seq,
                    turn_id=turn_id,
                    message=message_info(row),
                    finish_reason=finish,
                    usage=usage,
                    error=error,
                )
            )
        with contextlib.suppress(Exception):
            await self.inflight.end(turn_id, conversation_id)
        return row is not None

    async def _write_final(
        self,
        turn_id: uuid.UUID,
        text: str,
        status: MessageStatus,
        meta: dict[str, Any],
        *,
        swept: bool,
    ) -> MessageRow | None:
        delay, warned_at = 0.1, 0.0
        while True:
            try:
                async with self._db.begin() as s:
                    return await queries.finish_reply(
                        s, turn_id, text=text, status=status, meta=meta, swept=swept
                    )
            except Exception as exc:  # Postgres away or restarting: keep trying
                if time.monotonic() - warned_at > 30:
                    warned_at = time.monotonic()
                    log.warning("final write of turn %s failed, retrying: %r", turn_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


@dataclass(eq=False)
class _TurnEndWaiter:
    """A hub subscriber that only notices one turn's end."""

    turn_id: uuid.UUID
    id: str = field(default_factory=lambda: f"turn-end-{uuid.uuid4().hex}")
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: Event) -> None:
        if event.kind in ("turn_end", "message") and event.turn_id == self.turn_id:
            self.ended.set()

    def resync(self, conversation_id: uuid.UUID) -> None:
        return None  # the caller's timeout bounds the wait; the session repairs itself


def route_info(decision: router.Decision) -> RouteInfo:
    analysis = decision.analysis
    return RouteInfo(
        reason=decision.reason,
        skill=decision.skill,
        skill_id=decision.skill_id,
        score=decision.score,
        language=analysis.language,
        kind=analysis.kind,
        complexity=analysis.complexity,
        why=decision.why,
    )


async def reembed(db: async_sessionmaker[AsyncSession], embedder: Embedder, batch: int = 64) -> int:
    """Re-embed skills and examples made by another embedder (or none yet)."""
    async with db.begin() as s:
        skills, examples = await queries.stale_vectors(s, embedder.name)
        rows: list[tuple[Any, str]] = [(r, r.description) for r in skills]
        rows += [(r, r.text) for r in examples]
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            vectors = await embedder.embed([text for _, text in chunk])
            for (row, _), vector in zip(chunk, vectors, strict=True):
                row.embedding, row.embedder = vector, embedder.name
    return len(rows)


def _chat_turns(rows: list[MessageRow]) -> list[ChatTurn]:
    return [ChatTurn("user" if r.role == "user" else "model", r.text) for r in rows]


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)
