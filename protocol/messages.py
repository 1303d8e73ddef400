"""Every message of protocol v1, as typed structs. Pure data: no I/O, no server imports.

Frames are JSON objects discriminated by ``type``. A client frame may carry ``id``;
the server echoes it in the ``ack``/``error``/reply it causes. Fields equal to their
default are left out of encoded frames.

Sequence numbers: every stored message has a ``seq``, increasing per conversation.
An assistant reply gets its ``seq`` when it starts (``turn_start``); the same ``seq``
is repeated in its ``turn_end``. A client resumes with ``after_seq`` = the highest
``seq`` it holds *complete* (from ``message`` or ``turn_end``); replies still streaming
are re-sent as ``turn_start`` + a ``delta`` from offset 0, then live deltas. Deltas
carry ``offset`` (where ``text`` starts in the reply), so a client drops any text
it already has and never sees a gap.

Branches: messages form a tree (``parent_id``). ``regenerate`` adds a reply to an
earlier user turn, ``send`` with ``edit_of`` adds a corrected user turn beside the one
it edits; siblings are alternatives (``alternative`` of ``alternatives``). A
conversation shows one branch, the path up from ``leaf_id``: every new message becomes
the leaf, and ``switch`` picks another (``conversation`` event to every device).
``history`` returns the active branch; a resume replays every message after
``after_seq`` on any branch, in seq order, so seqs stay gap-free.
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any

import msgspec

PROTOCOL_VERSION = 1

# Postgres rejects NUL in text; refuse it at the edge rather than fail on insert.
NO_NUL = r"^[^\x00]*$"  # Postgres refuses NUL in text
Text = Annotated[str, msgspec.Meta(pattern=NO_NUL)]
ShortText = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL)]
# Sequence numbers and offsets: at most 2**53 - 1, the largest integer a JavaScript
# client holds exactly (and far inside Postgres' bigint; larger values were `internal`).
MAX_SEQ = 2**53 - 1
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(enum.StrEnum):
    COMPLETE = "complete"
    STREAMING = "streaming"
    INTERRUPTED = "interrupted"  # cancelled or barged-in; text is what was kept
    ERROR = "error"  # the model failed; text is what arrived before the failure


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    SAFETY = "safety"
    CANCELLED = "cancelled"  # ``cancel`` without ``heard_chars``: kept everything generated
    INTERRUPTED = "interrupted"  # ``cancel`` with ``heard_chars``: kept what was heard
    QUOTA = "quota"  # the user's daily token quota ran out mid-reply: kept what was generated
    HANDOFF = "handoff"  # handed to a teammate, whose reply follows (``route.handoff_from``)
    ERROR = "error"


class _Frame(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


# ---------------------------------------------------------------- client → server


class ConversationCreate(msgspec.Struct, omit_defaults=True, kw_only=True):
    title: ShortText | None = None
    assistant_id: uuid.UUID | None = None


class InterruptOn(enum.StrEnum):
    """When a voice ``input`` interrupts the reply streaming in its conversation."""

    FINAL = "final"  # a final transcript (the user finished speaking over the reply)
    PARTIAL = "partial"  # the first partial of an utterance (the user started speaking)
    NEVER = "never"


class SessionOptions(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Per-connection behaviour, chosen in ``hello``. Defaults suit text chat."""

    interrupt_on: InterruptOn = InterruptOn.FINAL
    # Deltas cut at sentence/clause ends (。、！？ and English punctuation + space) so
    # text-to-speech starts on whole phrases; unfinished text waits at most this long.
    speech_chunks: bool = False
    speech_max_wait_ms: Annotated[int, msgspec.Meta(ge=50, le=10_000)] = 700
    # Partial transcripts prepare the turn (route, history) before the final one.
    early_routing: bool = True
    # The model's thought summaries stream as ``thought`` events (never in the reply's
    # text, never stored); without it they are not sent to this connection.
    thoughts: bool = False
    # Model bursts re-split into words (characters for Japanese) and paced evenly; the
    # end of a reply is at most 300 ms later. Ignored with speech_chunks (phrases win).
    smooth_streaming: bool = False


class Hello(_Frame, tag="hello", kw_only=True):
    id: RequestId | None = None
    token: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    client: ShortText | None = None  # free-form client name/version, for logs
    protocol: int = PROTOCOL_VERSION
    options: SessionOptions = msgspec.field(default_factory=SessionOptions)


class Join(_Frame, tag="join", kw_only=True):
    """Join ``conversation_id``, or create one with ``create``; exactly one of the two.

    ``offsets`` (turn id → characters held) lets a client resuming mid-reply get only
    the text it lacks: no turn_start again, and deltas from that offset on."""

    id: RequestId | None = None
    conversation_id: uuid.UUID | None = None
    create: ConversationCreate | None = None
    after_seq: Seq | None = None
    offsets: Annotated[dict[uuid.UUID, Seq], msgspec.Meta(max_length=16)] | None = None


class Send(_Frame, tag="send", kw_only=True):
    """A user turn. ``id`` is the idempotency key: resending it returns the first ack.

    ``edit_of``: a user turn of this conversation this one corrects; it becomes an
    alternative of it (a new branch from its parent) and the model sees only that
    branch."""

    id: RequestId
    conversation_id: uuid.UUID
    text: Text
    assistant_id: uuid.UUID | None = None
    edit_of: uuid.UUID | None = None


class Regenerate(_Frame, tag="regenerate", kw_only=True):
    """A new reply to the user turn ``reply_to``; the earlier ones stay as alternatives.
    ``id`` is the idempotency key, like a send's: the ack names the new reply."""

    id: RequestId
    conversation_id: uuid.UUID
    reply_to: uuid.UUID
    assistant_id: uuid.UUID | None = None  # another assistant than the router's pick


class Switch(_Frame, tag="switch", kw_only=True):
    """Show the branch through ``message_id``, or through its ``alternative``-th
    sibling (1-based): the newest message below it becomes the leaf. Answered with a
    ``history`` page of the branch now shown."""

    id: RequestId | None = None
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    alternative: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class Input(_Frame, tag="input", kw_only=True):
    """A voice transcript: partials are relayed live, ``final`` commits like ``send``."""

    id: RequestId | None = None
    conversation_id: uuid.UUID
    input_id: RequestId
    text: Text
    final: bool = False
    # Characters of the reply being interrupted that the user heard (see interrupt_on).
    heard_chars: Seq | None = None


class Cancel(_Frame, tag="cancel", kw_only=True):
    """Stop a running reply (the newest one if ``turn_id`` is omitted)."""

    id: RequestId | None = None
    conversation_id: uuid.UUID
    turn_id: uuid.UUID | None = None
    heard_chars: Seq | None = None  # keep only this many characters of the reply


class History(_Frame, tag="history", kw_only=True):
    id: RequestId | None = None
    conversation_id: uuid.UUID
    before_seq: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class Leave(_Frame, tag="leave", kw_only=True):
    id: RequestId | None = None
    conversation_id: uuid.UUID


class Typing(_Frame, tag="typing", kw_only=True):
    id: RequestId | None = None
    conversation_id: uuid.UUID
    active: bool = True


class Ping(_Frame, tag="ping", kw_only=True):
    id: RequestId | None = None


ClientMessage = (
    Hello | Join | Send | Regenerate | Switch | Input | Cancel | History | Leave | Typing | Ping
)


# ---------------------------------------------------------------- server → client


class Limits(msgspec.Struct, kw_only=True):
    max_frame_bytes: int
    max_text_chars: int
    outbox_frames: int  # frames queued for a client before it is closed as slow
    outbox_bytes: int = 0  # ... or bytes queued (0: not announced by this server)


class Welcome(_Frame, tag="welcome", kw_only=True):
    id: RequestId | None = None
    session_id: str
    node: str
    user_id: str
    protocol: int = PROTOCOL_VERSION
    heartbeat_ms: int
    limits: Limits


class ConversationInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    id: uuid.UUID
    title: str | None = None
    assistant_id: uuid.UUID | None = None
    last_seq: int = 0
    leaf_id: uuid.UUID | None = None  # the newest message of the branch shown


class Joined(_Frame, tag="joined", kw_only=True):
    """Sent before the replay. ``recovered`` is true when every event after
    ``after_seq`` follows; false when none was asked for or too many were missed
    (then fetch ``history``)."""

    id: RequestId | None = None
    conversation: ConversationInfo
    last_seq: int
    recovered: bool


class Ack(_Frame, tag="ack", kw_only=True):
    id: RequestId
    message_id: uuid.UUID
    seq: int
    duplicate: bool = False


class Usage(msgspec.Struct, omit_defaults=True, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0  # the reply's tokens, thinking not included
    thought_tokens: int = 0  # the model's thinking (billed, and counted in quotas)


class RouteInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Why this assistant and model answer. ``reason``: explicit (the turn named it),
    skill (a skill matched at or above its threshold), default (nothing confident: the
    conversation's assistant), fallback (no default set: the first assistant)."""

    reason: str
    skill: str | None = None
    skill_id: uuid.UUID | None = None
    score: float | None = None  # cosine similarity of the matched skill
    # How much more the turn looks like the best skill's work than small talk does, as a
    # rank in [0, 1] calibrated per team: it means the same for every embedder. Set
    # whenever skills were matched (also when the router abstained).
    confidence: float | None = None
    language: str | None = None  # ja | en | zh | ko | other
    kind: str | None = None  # schedule | research | write | translate | code | finance | chat
    complexity: str | None = None  # low | medium | high
    # Tokens the model may think before answering: 0 off, -1 the model decides. Simple
    # turns get the low-latency budget, complex ones their assistant's.
    thinking_budget: int | None = None
    why: str | None = None  # one human-readable sentence
    # A teammate handed the turn over (``handoff`` tool): its assistant id and reason.
    handoff_from: uuid.UUID | None = None
    handoff_reason: str | None = None


class ErrorInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    code: str
    message: str
    retryable: bool = False
    retry_after_ms: int | None = None  # when the model said how long to wait (a 429)


class ToolCallInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A tool the reply called, with its outcome: in ``MessageInfo.tools``, in order."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    offset: int  # where in the reply's text the call was made
    ok: bool = False
    result: Any = None  # what the tool returned (when ok)
    error: ErrorInfo | None = None  # why it failed (when not ok)


class MessageInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    id: uuid.UUID
    seq: int
    role: Role
    text: str
    status: MessageStatus
    created_at: str  # ISO 8601, UTC
    client_id: str | None = None  # the ``send`` id of a user turn
    reply_to: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    model: str | None = None
    finish_reason: FinishReason | None = None
    parent_id: uuid.UUID | None = None  # the message before it on its branch
    alternative: int = 1  # which of its siblings this is, 1-based, oldest first
    alternatives: int = 1  # how many siblings (regenerated replies, edited turns)
    tools: list[ToolCallInfo] = msgspec.field(default_factory=list)  # a reply's tool calls


class Message(_Frame, tag="message", kw_only=True):
    conversation_id: uuid.UUID
    seq: int
    message: MessageInfo


class AssistantRef(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str


class TurnStart(_Frame, tag="turn_start", kw_only=True):
    conversation_id: uuid.UUID
    seq: int
    turn_id: uuid.UUID  # the assistant message's id
    reply_to: uuid.UUID  # the user message's id
    assistant: AssistantRef
    model: str
    route: RouteInfo
    alternatives: int = 1  # replies to ``reply_to`` with this one, which is the newest


class Delta(_Frame, tag="delta", kw_only=True):
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    offset: int
    text: str


class Thought(_Frame, tag="thought", kw_only=True):
    """A piece of the model's thought summary for a reply, before its text; only to
    connections that asked (``hello.options.thoughts``), never stored or replayed."""

    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    offset: int  # where ``text`` starts in the reply's thought summary so far
    text: str


class ToolCall(_Frame, tag="tool_call", kw_only=True):
    """The model called a tool; the server runs it (on the user's backend) now."""

    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    call_id: str
    name: str
    arguments: dict[str, Any]
    offset: int  # where in the reply's text the call was made


class ToolResult(_Frame, tag="tool_result", kw_only=True):
    """A tool's outcome, which the model reads before it goes on."""

    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    call_id: str
    name: str
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None  # tool_timeout | tool_failed | tool_rejected | ...


class TurnEnd(_Frame, tag="turn_end", kw_only=True):
    conversation_id: uuid.UUID
    seq: int
    turn_id: uuid.UUID
    message: MessageInfo
    finish_reason: FinishReason
    usage: Usage = msgspec.field(default_factory=Usage)
    error: ErrorInfo | None = None  # set when finish_reason is error


class InputEvent(_Frame, tag="input", kw_only=True):
    """A partial transcript from another device, relayed live and never stored."""

    conversation_id: uuid.UUID
    input_id: str
    text: str
    final: bool = False
    user_id: str


class TypingEvent(_Frame, tag="typing", kw_only=True):
    conversation_id: uuid.UUID
    user_id: str
    session_id: str
    active: bool


class Presence(_Frame, tag="presence", kw_only=True):
    """Who is in the conversation, across replicas; sent when a device joins or leaves."""

    conversation_id: uuid.UUID
    users: list[str]  # distinct user ids present
    devices: int  # connections joined to the conversation


class ConversationUpdated(_Frame, tag="conversation", kw_only=True):
    """The conversation changed (renamed over REST): sent to every device joined to it,
    on every replica. Live only; a device that joins later reads it in ``joined``."""

    conversation_id: uuid.UUID
    conversation: ConversationInfo


class HistoryPage(_Frame, tag="history", kw_only=True):
    id: RequestId | None = None
    conversation_id: uuid.UUID
    messages: list[MessageInfo]  # oldest first
    has_more: bool


class Left(_Frame, tag="left", kw_only=True):
    id: RequestId | None = None
    conversation_id: uuid.UUID


class Pong(_Frame, tag="pong", kw_only=True):
    id: RequestId | None = None


class GoAway(_Frame, tag="go_away", kw_only=True):
    reconnect_after_ms: int


class Error(_Frame, tag="error", kw_only=True):
    id: str | None = None
    code: str
    message: str
    retryable: bool = False
    retry_after_ms: int | None = None


ServerMessage = (
    Welcome
    | Joined
    | Ack
    | Message
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
    | HistoryPage
    | Left
    | Pong
    | GoAway
    | Error
)
