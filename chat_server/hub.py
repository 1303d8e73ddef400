"""Local registry: conversation → sessions on this node, and the bus subscriptions.

The hub subscribes to a conversation's bus channel when its first local session joins
and unsubscribes after the last one leaves. Every event is encoded once (``Event``) and
the same frame goes to every local session; then it is published to the other replicas.
Echoes of this node's own events coming back from the bus are dropped.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from chat_server.bus import Bus
from chat_server.metrics import Metrics
from protocol import encode
from protocol.messages import (
    ConversationUpdated,
    Delta,
    InputEvent,
    Message,
    Presence,
    Thought,
    ToolCall,
    ToolResult,
    TurnEnd,
    TurnStart,
    TypingEvent,
)

log = logging.getLogger(__name__)

Broadcast = (
    Message
    | TurnStart
    | Delta
    | Thought
    | ToolCall
    | ToolResult
    | TurnEnd
    | InputEvent
    | TypingEvent
    | Presence
    | ConversationUpdated
)


class Event(msgspec.Struct, kw_only=True):
    """One encoded server frame plus what sessions need to order, trim and merge it."""

    kind: str  # the frame's ``type``
    frame: str  # JSON text, encoded once
    conversation_id: uuid.UUID | None = None
    seq: int = 0
    turn_id: uuid.UUID | None = None
    offset: int = 0
    text: str = ""  # a delta's text, so it can be trimmed or merged without decoding
    exclude: str | None = None  # session id that must not receive it (its own relay)
    origin: str = ""
    # Live, never-stored events that supersede the previous one from the same source (a
    # voice partial, typing): a queued one is replaced, not queued again.
    supersedes: str = ""

    @classmethod
    def of(cls, message: Broadcast, *, exclude: str | None = None) -> Event:
        event = cls(
            kind=message.__struct_config__.tag,  # type: ignore[arg-type]
            frame=encode(message).decode(),
            conversation_id=message.conversation_id,
            exclude=exclude,
        )
        if isinstance(message, Message | TurnStart | TurnEnd):
            event.seq = message.seq
        if isinstance(message, TurnStart | TurnEnd | Delta):
            event.turn_id = message.turn_id
        elif isinstance(message, Message) and message.message.role == "assistant":
            event.turn_id = message.message.id  # a stored reply completes its turn
        if isinstance(message, Delta):
            event.offset, event.text = message.offset, message.text
        elif isinstance(message, InputEvent) and not message.final:
            event.supersedes = f"input:{message.user_id}:{message.input_id}"
        elif isinstance(message, TypingEvent):
            event.supersedes = f"typing:{message.session_id}"
        return event

    def with_text(self, offset: int, text: str, *, encoded: bool = True) -> Event:
        """This delta event with other text (trimmed or merged); its frame re-encoded,
        or left empty to be encoded when sent (``encoded=False``)."""
        assert self.conversation_id is not None
        assert self.turn_id is not None
        new = msgspec.structs.replace(self, offset=offset, text=text, frame="")
        if encoded:
            delta = Delta(
                conversation_id=self.conversation_id, turn_id=self.turn_id, offset=offset, text=text
            )
            new.frame = encode(delta).decode()
        return new

    @classmethod
    def reply(cls, message: msgspec.Struct) -> Event:
        """A frame for one session only (ack, error, joined, ...)."""
        return cls(kind="reply", frame=encode(message).decode())  # type: ignore[arg-type]


class Subscriber(Protocol):
    id: str

    def deliver(self, event: Event) -> None: ...

    def resync(self, conversation_id: uuid.UUID) -> None:
        """Events may have been lost (bus reconnect): repair from the sources of truth."""


_envelope = msgspec.json.Encoder()
_unenvelope = msgspec.json.Decoder(Event)


@dataclass(eq=False)
class Hub:
    bus: Bus
    node_id: str
    metrics: Metrics | None = None
    _local: dict[uuid.UUID, set[Subscriber]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bus.on_reconnect(self._resync_all)
        self.metrics = self.metrics or Metrics(self.node_id)

    def _resync_all(self) -> None:
        for conversation_id, members in self._local.items():
            for subscriber in tuple(members):
                subscriber.resync(conversation_id)

    @staticmethod
    def channel(conversation_id: uuid.UUID) -> str:
        return f"conv:{conversation_id}"

    async def join(self, conversation_id: uuid.UUID, subscriber: Subscriber) -> None:
        members = self._local.setdefault(conversation_id, set())
        first = not members
        members.add(subscriber)
        if first:
            await self.bus.subscribe(
                self.channel(conversation_id), lambda p: self._from_bus(conversation_id, p)
            )

    async def leave(self, conversation_id: uuid.UUID, subscriber: Subscriber) -> None:
        members = self._local.get(conversation_id)
        if members is None or subscriber not in members:
            return
        members.discard(subscriber)
        if not members:
            del self._local[conversation_id]
            await self.bus.unsubscribe(self.channel(conversation_id))

    async def publish(self, message: Broadcast, *, exclude: str | None = None) -> None:
        event = Event.of(message, exclude=exclude)
        self._deliver(message.conversation_id, event)
        event.origin = self.node_id
        assert self.metrics is not None
        self.metrics.bus_publishes.inc()
        await self.bus.publish(self.channel(message.conversation_id), _envelope.encode(event))

    def _from_bus(self, conversation_id: uuid.UUID, payload: bytes) -> None:
        try:
            event = _unenvelope.decode(payload)
        except msgspec.DecodeError:
            log.exception("dropping undecodable bus payload on %s", conversation_id)
            return
        if event.origin != self.node_id:
            assert self.metrics is not None
            self.metrics.bus_deliveries.inc()
            self._deliver(conversation_id, event)

    def _deliver(self, conversation_id: uuid.UUID, event: Event) -> None:
        for subscriber in tuple(self._local.get(conversation_id, ())):
            if subscriber.id != event.exclude:
                subscriber.deliver(event)
