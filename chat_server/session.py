"""One connection: its state, the dispatch of client frames, and its bounded outbox.

A session never blocks the hub: ``deliver`` only appends to the outbox, which one
writer task drains. Every conversation event goes through ``_accept``, which sends
each stored message once (by seq), each reply's text once (by offset), and repairs a
gap (a delta ahead of what was sent, or events lost while the bus was reconnecting)
from the shared in-flight state and Postgres. Deltas of one reply that queue up behind a
slow socket merge into one frame, and a voice partial or typing event replaces the
queued one from the same source; a client that still falls ``outbox_frames`` frames or
``outbox_bytes`` bytes behind is closed with 4000 ("slow consumer, resume"). The
session never touches Starlette: ``ws.py`` hands it a ``Transport``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from chat_server import conversations
from chat_server.errors import CLOSES, ChatError
from chat_server.feed import FINISHED_MEMORY, ConversationFeed, FeedState, Replies
from chat_server.hub import Event
from chat_server.inflight import InflightTurn
from chat_server.outbox import Outbox
from chat_server.presence import Device
from chat_server.runtime import Runtime
from chat_server.speech import SpeechChunker
from chat_server.storage import queries
from chat_server.storage.models import Message as MessageRow
from chat_server.turns import Prepared, message_info
from chat_server.voice import Voice
from protocol import decode_client, decode_server
from protocol.errors import RETRYABLE, CloseCode, Disconnect, ErrorCode, ErrorReply
from protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    ClientMessage,
    ConversationInfo,
    Delta,
    Error,
    Hello,
    History,
    HistoryPage,
    Input,
    InputEvent,
    Join,
    Joined,
    Leave,
    Left,
    Limits,
    Message,
    Ping,
    Pong,
    Send,
    SessionOptions,
    TurnStart,
    Typing,
    TypingEvent,
    Welcome,
)

log = logging.getLogger(__name__)

MAX_JOINED = 64  # conversations one connection may join at once
# Live events fan out to every device on every replica: one source relays at most one
# voice partial per PARTIAL_EVERY_S (the newest; the last always goes out) and repeats
# an unchanged typing state at most every TYPING_EVERY_S.
PARTIAL_EVERY_S = 0.1
TYPING_EVERY_S = 1.0


class Transport(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    READY = "ready"
    CLOSING = "closing"


@dataclass(eq=False)
class _Speech:
    """A reply's speech chunker and the timer that flushes it at the maximum wait."""

    chunker: SpeechChunker
    timer: asyncio.TimerHandle | None = None


class Session:
    def __init__(self, runtime: Runtime, transport: Transport) -> None:
        self.id = uuid.uuid4().hex
        self.state = SessionState.AWAITING_HELLO
        self.user_id: uuid.UUID | None = None
        self.subject = ""
        self._rt = runtime
        self._transport = transport
        self.outbox = Outbox(
            max_frames=runtime.settings.outbox_frames, max_bytes=runtime.settings.outbox_bytes
        )
        self._wake = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._joined: dict[uuid.UUID, ConversationFeed] = {}
        self._replies = Replies()  # how much of each reply was queued, across feeds
        self._repairing: set[uuid.UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.options = SessionOptions()
        self._speech: dict[uuid.UUID, _Speech] = {}
        self._relayed: dict[tuple[Any, ...], float] = {}  # live event source → last relay
        self._held: dict[tuple[Any, ...], InputEvent] = {}  # partials waiting for their slot
        self._voice = Voice(runtime.turns)  # barge-in and early routing

    # ------------------------------------------------------------------ inbound

    async def handle(self, data: str | bytes) -> None:
        """Handle one client frame. Raises ``Disconnect`` when the connection must end."""
        request_id: str | None = None
        try:
            message = decode_client(data)
            request_id = getattr(message, "id", None)
            await self._dispatch(message)
        except ChatError as exc:
            if exc.code in CLOSES:
                raise Disconnect(CLOSES[exc.code], exc.message) from None
            self.reply(_error_frame(exc.code, exc.message, request_id, exc.retry_after_ms))
        except ErrorReply as exc:
            self.reply(
                _error_frame(
                    exc.code, exc.message, exc.request_id or request_id, exc.retry_after_ms
                )
            )
        except Disconnect:
            raise
        except Exception:
            log.exception("session %s: frame failed", self.id)
            self.reply(
                Error(
                    id=request_id, code=ErrorCode.INTERNAL, message="internal error", retryable=True
                )
            )

    async def _dispatch(self, message: ClientMessage) -> None:
        if self.state is SessionState.AWAITING_HELLO:
            if not isinstance(message, Hello):
                raise ErrorReply(ErrorCode.HELLO_REQUIRED, "the first frame must be hello")
            await self._hello(message)
            return
        if self.state is SessionState.CLOSING:
            return
        match message:
            case Hello():
                raise ErrorReply(ErrorCode.ALREADY_HELLO, "hello was already received")
            case Join():
                await self._join(message)
            case Send():
                await self._send(
                    message.id, message.conversation_id, message.text, message.assistant_id
                )
            case Input():
                await self._input(message)
            case Cancel():
                self._require_joined(message.conversation_id)
                await self._rt.turns.cancel(
                    message.conversation_id, message.turn_id, message.heard_chars
                )
            case History():
                await self._history(message)
            case Leave():
                await self._leave(message.conversation_id)
                self.reply(Left(id=message.id, conversation_id=message.conversation_id))
            case Typing():
                await self._relay(
                    TypingEvent(
                        conversation_id=message.conversation_id,
                        user_id=self.subject,
                        session_id=self.id,
                        active=message.active,
                    )
                )
            case Ping():
                self.reply(Pong(id=message.id))

    async def _hello(self, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            raise Disconnect(
                CloseCode.PROTOCOL_VIOLATION,
                f"protocol {hello.protocol} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
            )
        self.subject = self._rt.auth.subject(hello.token)
        self.user_id = await self._rt.users.resolve(self.subject)
        self.options = hello.options
        self.state = SessionState.READY
        settings = self._rt.settings
        self.reply(
            Welcome(
                id=hello.id,
                session_id=self.id,
                node=settings.node_id,
                user_id=self.subject,
                heartbeat_ms=settings.heartbeat_ms,
                limits=Limits(
                    max_frame_bytes=settings.max_frame_bytes,
                    max_text_chars=settings.max_text_chars,
                    outbox_frames=settings.outbox_frames,
                    outbox_bytes=settings.outbox_bytes,
                ),
            )
        )

    @property
    def _owner(self) -> uuid.UUID:
        assert self.user_id is not None, "only READY sessions dispatch"
        return self.user_id

    def _require_joined(self, conversation_id: uuid.UUID) -> None:
        if conversation_id not in self._joined:
            raise ErrorReply(ErrorCode.NOT_JOINED, f"join conversation {conversation_id} first")

    async def _join(self, join: Join) -> None:
        if (join.conversation_id is None) == (join.create is None):
            raise ErrorReply(
                ErrorCode.BAD_MESSAGE, "join needs exactly one of conversation_id, create"
            )
        if join.conversation_id not in self._joined and len(self._joined) >= MAX_JOINED:
            raise ErrorReply(
                ErrorCode.BAD_MESSAGE, f"at most {MAX_JOINED} conversations per connection"
            )
        if join.create is not None:
            async with self._rt.db.begin() as s:
                created = await conversations.create(
                    s, self._owner, title=join.create.title, assistant_id=join.create.assistant_id
                )
            conversation_id = created.id
        else:
            assert join.conversation_id is not None
            conversation_id = join.conversation_id
        await self._leave(conversation_id)  # a repeated join starts over
        state = self._joined[conversation_id] = ConversationFeed(
            conversation_id, self._replies, buffer_limit=self._rt.settings.outbox_frames
        )
        for turn_id, held in (join.offsets or {}).items():
            self._replies.offsets[turn_id] = held  # the client has this much of a reply
        # Subscribe first, then check and read in one transaction: events published
        # meanwhile wait in the feed (REPLAYING), and nothing is sent before the check.
        await self._rt.hub.join(conversation_id, self)
        try:
            await self._replay(join, conversation_id, state)
        except BaseException:
            self._joined.pop(conversation_id, None)
            await self._rt.hub.leave(conversation_id, self)
            raise
        try:
            await self._rt.presence.enter(conversation_id, self.device)
        except Exception:  # presence is best effort (Redis away); the refresh re-adds it
            log.warning("presence update on join failed", exc_info=True)

    @property
    def device(self) -> Device:
        return Device(self.id, self.subject)

    def joined_conversations(self) -> list[uuid.UUID]:
        return list(self._joined)

    async def _replay(
        self, join: Join, conversation_id: uuid.UUID, state: ConversationFeed
    ) -> None:
        """Send joined, the stored events after ``after_seq``, the replies still streaming,
        then the live events that arrived meanwhile, each exactly once. The hub
        subscription is live before anything is read, so nothing falls in between."""
        limit = self._rt.settings.replay_limit
        async with self._rt.db.begin() as s:
            conversation = await conversations.owned(s, self._owner, conversation_id)
            rows = (
                await queries.messages_after(s, conversation_id, join.after_seq, limit + 1)
                if join.after_seq is not None
                else []
            )
        # Everything that can fail is read before ``joined`` goes out: a device told it
        # joined must be joined.
        running = await self._running(conversation_id)
        # A replay too big for the outbox would close the device as slow, and its rejoin
        # would do the same again: past half the outbox it is recovered:false (history).
        replay_bytes = sum(len(row.text) for row in rows)
        recovered = (
            join.after_seq is not None
            and len(rows) <= limit
            and replay_bytes <= self._rt.settings.outbox_bytes // 2
        )
        # A fresh join (or one that missed too much) starts at the present.
        state.floor = (
            join.after_seq if recovered and join.after_seq is not None else conversation.last_seq
        )
        self.reply(
            Joined(
                id=join.id,
                conversation=ConversationInfo(
                    id=conversation.id,
                    title=conversation.title,
                    assistant_id=conversation.default_assistant_id,
                    last_seq=conversation.last_seq,
                ),
                last_seq=conversation.last_seq,
                recovered=recovered,
            )
        )
        if recovered:
            self._accept_rows(conversation_id, rows)
        for turn in running:
            self._catch_up(turn)
        for event in state.go_live():
            self._accept(event)

    def _accept_rows(self, conversation_id: uuid.UUID, rows: list[MessageRow]) -> None:
        for row in rows:
            if row.status != "streaming":  # streaming ones come from the in-flight state
                self._accept(
                    Event.of(
                        Message(
                            conversation_id=conversation_id, seq=row.seq, message=message_info(row)
                        )
                    )
                )

    async def _running(self, conversation_id: uuid.UUID) -> list[InflightTurn]:
        """The replies streaming in the conversation, oldest first. With the shared state
        away (Redis down) none are known: the join still succeeds from Postgres, and the
        resync after the bus reconnects brings whatever was missed."""
        try:
            turns = await self._rt.turns.inflight.active(conversation_id)
        except Exception:
            log.warning("in-flight replies unavailable; joining without them", exc_info=True)
            return []
        return sorted(turns, key=lambda t: _start(t).seq)

    def _catch_up(self, turn: InflightTurn) -> None:
        """A reply streaming elsewhere: its turn_start, then its text so far as one delta."""
        self._accept(Event.of(_start(turn)))
        if turn.text:
            self._accept(
                Event.of(
                    Delta(
                        conversation_id=turn.conversation_id,
                        turn_id=turn.turn_id,
                        offset=0,
                        text=turn.text,
                    )
                )
            )

    async def _leave(self, conversation_id: uuid.UUID) -> None:
        if self._joined.pop(conversation_id, None) is not None:
            await self._rt.hub.leave(conversation_id, self)
            try:
                await self._rt.presence.leave(conversation_id, self.device)
            except Exception:  # presence is best effort; its TTL cleans up
                log.warning("presence update on leave failed", exc_info=True)

    def resync(self, conversation_id: uuid.UUID) -> None:
        """Called by the hub after the bus reconnected: events may have been lost."""
        feed = self._joined.get(conversation_id)
        if feed is not None and feed.state is FeedState.LIVE and self.state is SessionState.READY:
            self._spawn(self._resync(conversation_id))

    async def _resync(self, conversation_id: uuid.UUID) -> None:
        joined = self._joined.get(conversation_id)
        if joined is None:
            return
        limit = self._rt.settings.replay_limit
        async with self._rt.db.begin() as s:
            rows = await queries.messages_after(s, conversation_id, joined.floor, limit + 1)
        if len(rows) > limit:
            self.request_close(CloseCode.RESUME_REQUIRED, "too many events missed; resume")
            return
        self._accept_rows(conversation_id, rows)
        for turn in await self._running(conversation_id):
            self._catch_up(turn)

    def _repair(self, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        """A delta arrived ahead of the text sent so far: fetch the text it follows."""
        if turn_id not in self._repairing:
            self._repairing.add(turn_id)
            self._spawn(self._repair_turn(conversation_id, turn_id))

    async def _repair_turn(self, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        try:
            turn = await self._rt.turns.inflight.get(turn_id)
            if turn is not None:
                self._catch_up(turn)
            else:  # finished meanwhile: its final text is in Postgres
                await self._resync(conversation_id)
        finally:
            self._repairing.discard(turn_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("session %s: repair failed: %r", self.id, task.exception())

    async def _send(
        self,
        client_id: str,
        conversation_id: uuid.UUID,
        text: str,
        assistant_id: uuid.UUID | None,
        prepared: Prepared | None = None,
    ) -> None:
        self._require_joined(conversation_id)
        stored, turn = await self._rt.turns.store(
            owner_id=self._owner,
            conversation_id=conversation_id,
            client_id=client_id,
            text=text,
            assistant_id=assistant_id,
            prepared=prepared,
        )
        self.reply(
            Ack(
                id=client_id,
                message_id=stored.user_message.id,
                seq=stored.user_message.seq,
                duplicate=stored.duplicate,
            )
        )
        if turn is not None:
            await self._rt.turns.start(stored, turn)

    async def _relay(self, event: InputEvent | TypingEvent) -> None:
        """Live, never stored: to the conversation's other devices on every replica,
        throttled per source (``PARTIAL_EVERY_S``, ``TYPING_EVERY_S``)."""
        self._require_joined(event.conversation_id)
        now = asyncio.get_running_loop().time()
        if isinstance(event, TypingEvent):
            key: tuple[Any, ...] = ("typing", event.conversation_id, event.active)
            if now - self._relayed.get(key, -1e9) < TYPING_EVERY_S:
                return
            self._relayed.pop(("typing", event.conversation_id, not event.active), None)
        elif not event.final:
            key = ("input", event.conversation_id, event.input_id)
            wait = self._relayed.get(key, -1e9) + PARTIAL_EVERY_S - now
            if wait > 0:
                if key not in self._held:  # the first held one schedules the flush
                    self._spawn(self._relay_later(key, wait))
                self._held[key] = event
                return
        else:  # a final transcript goes out at once and supersedes any held partial
            key = ("input", event.conversation_id, event.input_id)
            self._held.pop(key, None)
        await self._relay_now(key, event)

    async def _relay_later(self, key: tuple[Any, ...], wait: float) -> None:
        await asyncio.sleep(wait)
        event = self._held.pop(key, None)
        if event is not None and event.conversation_id in self._joined:
            await self._relay_now(key, event)

    async def _relay_now(self, key: tuple[Any, ...], event: InputEvent | TypingEvent) -> None:
        self._relayed[key] = asyncio.get_running_loop().time()
        if len(self._relayed) > FINISHED_MEMORY:
            self._relayed.pop(next(iter(self._relayed)))
        await self._rt.hub.publish(event, exclude=self.id)

    async def _input(self, message: Input) -> None:
        await self._relay(
            InputEvent(
                conversation_id=message.conversation_id,
                input_id=message.input_id,
                text=message.text,
                final=message.final,
                user_id=self.subject,
            )
        )
        interrupted = await self._voice.interrupt(message, self.options.interrupt_on)
        if message.final:
            prepared = await self._voice.take_prepared(message.conversation_id)
            if interrupted:
                prepared = None  # the interrupted reply's stored text changed the history
            await self._send(
                message.input_id, message.conversation_id, message.text, None, prepared
            )
        elif self.options.early_routing:
            self._voice.prepare(self._owner, message.conversation_id, message.text)

    async def _history(self, message: History) -> None:
        async with self._rt.db.begin() as s:
            rows, has_more = await conversations.history(
                s,
                self._owner,
                message.conversation_id,
                before_seq=message.before_seq,
                limit=message.limit,
            )
        self.reply(
            HistoryPage(
                id=message.id,
                conversation_id=message.conversation_id,
                messages=[message_info(r) for r in rows],
                has_more=has_more,
            )
        )

    # ------------------------------------------------------------------ outbound

    def reply(self, message: msgspec.Struct) -> None:
        """A frame for this session only."""
        self._enqueue(Event.reply(message))

    def deliver(self, event: Event) -> None:
        """Called by the hub for every event of a joined conversation; never blocks."""
        if self.state is not SessionState.READY or event.conversation_id is None:
            return
        feed = self._joined.get(event.conversation_id)
        if feed is None:
            return
        if feed.state is FeedState.REPLAYING:
            if not feed.hold(event):
                self.request_close(CloseCode.SLOW_CONSUMER, "too many events during join")
            return
        self._accept(event)

    def _accept(self, event: Event) -> None:
        """A conversation event through its feed (exactly once by seq and offset), then
        speech chunking and the outbox; a gap the feed found is repaired."""
        feed = self._joined.get(event.conversation_id) if event.conversation_id else None
        if feed is None:
            return
        accepted = feed.accept(event)
        if accepted.repair is not None:
            self._repair(feed.conversation_id, accepted.repair)
        for out in accepted.events:
            if out.kind == "delta" and self.options.speech_chunks:
                self._speak(out)
                continue
            if out.turn_id is not None and out.kind in ("message", "turn_end"):
                self._speech_flush(out.turn_id)
            self._enqueue(out)

    # ------------------------------------------------------------------ speech chunks

    def _speak(self, event: Event) -> None:
        assert event.conversation_id is not None
        assert event.turn_id is not None
        speech = self._speech.get(event.turn_id)
        if speech is None:
            chunker = SpeechChunker(event.conversation_id, event.turn_id, event.offset)
            speech = self._speech[event.turn_id] = _Speech(chunker)
        delta = speech.chunker.push(event.text)
        if delta is not None:
            self._speech_send(speech, delta)
        if speech.chunker.pending and speech.timer is None:
            wait_s = self.options.speech_max_wait_ms / 1000
            speech.timer = asyncio.get_running_loop().call_later(
                wait_s, self._speech_timeout, speech
            )

    def _speech_timeout(self, speech: _Speech) -> None:
        speech.timer = None
        if self._speech.get(speech.chunker.turn_id) is speech:
            delta = speech.chunker.flush()
            if delta is not None:
                self._speech_send(speech, delta)

    def _speech_send(self, speech: _Speech, delta: Delta) -> None:
        if speech.timer is not None:  # what is left starts its own wait
            speech.timer.cancel()
            speech.timer = None
        self._enqueue(Event.of(delta))

    def _speech_flush(self, turn_id: uuid.UUID) -> None:
        """The reply ended: what is still held goes out before its turn_end."""
        speech = self._speech.pop(turn_id, None)
        if speech is not None:
            delta = speech.chunker.flush()
            if speech.timer is not None:
                speech.timer.cancel()
            if delta is not None:
                self._enqueue(Event.of(delta))

    def _enqueue(self, event: Event) -> None:
        if self._close is not None:
            return
        if not self.outbox.push(event):
            self.request_close(CloseCode.SLOW_CONSUMER, "client is not reading fast enough")
            return
        self._wake.set()

    def request_close(self, code: CloseCode, reason: str, *, flush: bool = False) -> None:
        """Close after the frames already queued (``flush``) or right away."""
        if self._close is not None:
            return
        if not flush:
            self.outbox.clear()
        self.state = SessionState.CLOSING
        self._close = (code.value, reason.encode()[:123].decode(errors="ignore"))
        self._wake.set()

    async def run_writer(self) -> None:
        """The only task that writes to the socket; returns after closing it."""
        while True:
            while (event := self.outbox.pop()) is not None:
                await self._transport.send_text(event.frame)
            if self._close is not None:
                await self._transport.close(*self._close)
                return
            self._wake.clear()
            await self._wake.wait()

    async def cleanup(self) -> None:
        self.state = SessionState.CLOSING
        for task in list(self._tasks):
            task.cancel()
        self._voice.close()
        for speech in self._speech.values():
            if speech.timer is not None:
                speech.timer.cancel()
        for conversation_id in list(self._joined):
            await self._leave(conversation_id)


def _error_frame(
    code: ErrorCode, message: str, request_id: str | None, retry_after_ms: int | None
) -> Error:
    return Error(
        id=request_id,
        code=code,
        message=message,
        retryable=RETRYABLE[code],
        retry_after_ms=retry_after_ms,
    )


def _start(turn: InflightTurn) -> TurnStart:
    start = decode_server(turn.start)
    assert isinstance(start, TurnStart)
    return start
