"""One connection: hello, the dispatch of its frames, and what it sends.

What it receives from joined conversations goes through ``Delivery`` (the feeds, exactly
once by seq and offset, and the repair of gaps), then the bounded ``Outbox`` (a client
too far behind is closed with 4000, "slow consumer, resume"). Joining and leaving
(``Membership``), turns, voice, live relays and speech chunks are their own modules.
It never touches Starlette: ``ws.py`` decodes frames, maps errors to frames or close
codes, and hands it a ``Transport``.
"""

from __future__ import annotations

import enum
import functools
import time
import uuid

import msgspec

from chat_server import conversations
from chat_server.delivery import Delivery
from chat_server.hub import Event
from chat_server.membership import Membership
from chat_server.outbox import Outbox
from chat_server.presence import Device
from chat_server.relay import Relay
from chat_server.runtime import Runtime
from chat_server.storage import queries
from chat_server.turns import TurnRequest
from chat_server.voice import Voice
from chat_server.wire import conversation_updated, message_info
from chat_server.writer import Transport, Writer
from protocol.errors import CloseCode, Disconnect, ErrorCode, ErrorReply
from protocol.messages import (
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    Hello,
    History,
    HistoryPage,
    Input,
    InputEvent,
    Join,
    Leave,
    Left,
    Limits,
    Ping,
    Pong,
    Regenerate,
    Send,
    SessionOptions,
    Switch,
    Typing,
    TypingEvent,
    Welcome,
)

RETRY_PLACE_MS = 5000  # told to a device refused for too many connections (4005)


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    READY = "ready"
    CLOSING = "closing"


class Session:
    def __init__(self, runtime: Runtime, transport: Transport) -> None:
        self.id = uuid.uuid4().hex
        self.state = SessionState.AWAITING_HELLO
        self.last_frame_at = time.monotonic()  # for the idle sweep (Drain.sweep_idle)
        self.user_id: uuid.UUID | None = None
        self.subject = ""
        self.holds: str | None = None  # the limiter key of this user's connections, once held
        self._rt = runtime
        self.metrics = runtime.metrics
        settings = runtime.settings
        outbox = Outbox(max_frames=settings.outbox_frames, max_bytes=settings.outbox_bytes)
        self.writer = Writer(
            transport, outbox, on_overflow=self._overflow, on_sent=runtime.metrics.frames_out.inc
        )
        self.delivery = Delivery(
            db=runtime.db,
            inflight=runtime.turns.inflight,
            buffer_limit=settings.outbox_frames,
            replay_limit=settings.replay_limit,
            replay_bytes=settings.outbox_bytes // 2,
            enqueue=self.writer.push,
            close=self.request_close,
            metrics=runtime.metrics,
        )
        self.joined = Membership(runtime, self, self.delivery)
        self.options = SessionOptions()
        self.close_code: int | None = None  # the code this server closes with, if it does
        # Made on first use (few connections speak or relay live input): ~0.9 KiB less
        # for every other connection.
        self._relay_: Relay | None = None
        self._voice_: Voice | None = None

    @property
    def _relay(self) -> Relay:
        if self._relay_ is None:
            publish = functools.partial(self._rt.hub.publish, exclude=self.id)
            self._relay_ = Relay(publish, self.joined.__contains__)
        return self._relay_

    @property
    def _voice(self) -> Voice:  # barge-in and early routing
        if self._voice_ is None:
            self._voice_ = Voice(self._rt.turns)
        return self._voice_

    # ------------------------------------------------------------------ inbound

    async def dispatch(self, message: ClientMessage) -> None:
        """Handle one decoded client frame. Raises ``ChatError``/``ErrorReply`` for an
        error frame, ``Disconnect`` when the connection must end (mapped in ``ws.py``)."""
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
                await self.joined.join(message, self._owner)
            case Send() | Regenerate():
                await self._send(TurnRequest.of(self._owner, message))
            case Input():
                await self._input(message)
            case Cancel():
                self._require_joined(message.conversation_id)
                await self._rt.turns.cancel(
                    message.conversation_id, message.turn_id, message.heard_chars
                )
            case History() | Switch():
                await self._page(message)
            case Leave():
                await self.joined.leave(message.conversation_id)
                self.reply(Left(id=message.id, conversation_id=message.conversation_id))
            case Typing():
                self._require_joined(message.conversation_id)
                await self._relay.relay(
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
        await self._hold_place()
        self.options = hello.options
        self.delivery.configure(hello.options, self.writer.push)
        self.state = SessionState.READY
        s = self._rt.settings
        limits = Limits(
            max_frame_bytes=s.max_frame_bytes,
            max_text_chars=s.max_text_chars,
            outbox_frames=s.outbox_frames,
            outbox_bytes=s.outbox_bytes,
        )
        self.reply(
            Welcome(
                id=hello.id,
                session_id=self.id,
                node=s.node_id,
                user_id=self.subject,
                heartbeat_ms=s.heartbeat_ms,
                limits=limits,
            )
        )

    async def _hold_place(self) -> None:
        """One of the user's ``CONNECTIONS_PER_USER`` places, across replicas, else 4005."""
        most, key = self._rt.settings.connections_per_user, f"connections:{self.subject}"
        if not await self._rt.limiter.hold(key, self.id, most):
            self.metrics.limit_hit("connections")
            reason = f"more than {most} open connections; retry_after_ms={RETRY_PLACE_MS}"
            raise Disconnect(CloseCode.TOO_MANY_CONNECTIONS, reason)
        self.holds = key

    @property
    def _owner(self) -> uuid.UUID:
        assert self.user_id is not None, "only READY sessions dispatch"
        return self.user_id

    @property
    def device(self) -> Device:
        return Device(self.id, self.subject)

    def _require_joined(self, conversation_id: uuid.UUID) -> None:
        if conversation_id not in self.joined:
            raise ErrorReply(ErrorCode.NOT_JOINED, f"join conversation {conversation_id} first")

    async def _send(self, request: TurnRequest) -> None:
        self._require_joined(request.conversation_id)
        await self._rt.turns.submit(request, self.reply)  # acks, then starts the reply

    async def _input(self, message: Input) -> None:
        self._require_joined(message.conversation_id)
        await self._relay.relay(
            InputEvent(
                conversation_id=message.conversation_id,
                input_id=message.input_id,
                text=message.text,
                final=message.final,
                user_id=self.subject,
            )
        )
        prepared = await self._voice.on_input(message, self.options, self._owner)
        if message.final:
            cid, text = message.conversation_id, message.text
            await self._send(TurnRequest(self._owner, cid, message.input_id, text, None, prepared))

    async def _page(self, message: History | Switch) -> None:
        """A page of the branch shown (``history``), or of another branch (``switch``):
        then every device of the conversation hears of it as a ``conversation`` event."""
        cid, updated = message.conversation_id, None
        async with self._rt.db.begin() as s:
            if isinstance(message, History):
                rows, more = await conversations.history(
                    s, self._owner, cid, before_seq=message.before_seq, limit=message.limit
                )
            else:
                switched = await conversations.switch(
                    s, self._owner, cid, message.message_id, message.alternative
                )
                rows, more = await queries.branch_page(
                    s, switched, before_seq=None, limit=message.limit
                )
                updated = conversation_updated(switched)
        if updated is not None:
            await self._rt.hub.publish(updated)
        page = [message_info(*r) for r in rows]
        self.reply(HistoryPage(id=message.id, conversation_id=cid, messages=page, has_more=more))

    # ------------------------------------------------------------------ outbound

    def reply(self, message: msgspec.Struct) -> None:
        """A frame for this session only."""
        self.writer.push(Event.reply(message))

    def _overflow(self) -> None:
        self.request_close(CloseCode.SLOW_CONSUMER, "client is not reading fast enough")

    def deliver(self, event: Event) -> None:
        """Called by the hub for every event of a joined conversation; never blocks."""
        if self.state is SessionState.READY:
            self.delivery.deliver(event)

    def resync(self, conversation_id: uuid.UUID) -> None:
        """Called by the hub after the bus reconnected: events may have been lost."""
        if self.state is SessionState.READY:
            self.delivery.resync(conversation_id)

    def close_if_silent(self, now: float, hello_timeout_s: float, idle_s: float) -> None:
        """Close a connection with no hello in time (4002) or no frame for ``idle_s``
        (4001), as of ``now`` (monotonic)."""
        silent = now - self.last_frame_at
        if self.state is SessionState.AWAITING_HELLO:
            if silent > hello_timeout_s:
                self.request_close(CloseCode.HELLO_TIMEOUT, "no hello in time", flush=True)
        elif self.state is SessionState.READY and silent > idle_s:
            self.request_close(CloseCode.IDLE_TIMEOUT, "no frame for two heartbeats", flush=True)

    def request_close(self, code: CloseCode, reason: str, *, flush: bool = False) -> None:
        """Close after the frames already queued (``flush``) or right away."""
        if self.writer.close(code, reason, flush=flush):
            self.state = SessionState.CLOSING
            self.close_code = code.value
            if code is CloseCode.SLOW_CONSUMER:
                self._rt.metrics.slow_consumers.labels(self._rt.metrics.replica).inc()

    async def cleanup(self) -> None:
        self.state = SessionState.CLOSING
        self.delivery.close()
        if self._voice_ is not None:
            self._voice_.close()
        if self._relay_ is not None:
            self._relay_.close()
        await self.joined.leave_all()
        if self.holds is not None:
            await self._rt.limiter.release(self.holds, self.id)
