"""The REST API's request and response bodies (msgspec types): validated on the way in,
and the source of the OpenAPI document's schemas."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from protocol.messages import NO_NUL, MessageInfo

# Every string a client sends is free of NUL: Postgres rejects it in text (a 500 before).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL)]
Prose = Annotated[str, msgspec.Meta(max_length=20_000, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=NO_NUL)]
Title = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
TurnText = Annotated[str, msgspec.Meta(min_length=1, max_length=16_000, pattern=NO_NUL)]
Model = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-/:]+$")]
Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# Thinking tokens for complex turns: 0 off, -1 the model decides.
ThinkingBudget = Annotated[int, msgspec.Meta(ge=-1, le=32768)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=200)]


class _In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AssistantIn(_In):
    name: Name
    description: Prose = ""
    system_prompt: Prose = ""
    default_model: Model | None = None  # the server's GEMINI_MODEL when omitted
    complex_model: Model | None = None
    thinking_budget: ThinkingBudget | None = None  # the THINKING_BUDGET setting when omitted


class AssistantPatch(_In):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Prose | msgspec.UnsetType = msgspec.UNSET
    system_prompt: Prose | msgspec.UnsetType = msgspec.UNSET
    default_model: Model | msgspec.UnsetType = msgspec.UNSET
    complex_model: Model | msgspec.UnsetType | None = msgspec.UNSET
    thinking_budget: ThinkingBudget | msgspec.UnsetType | None = msgspec.UNSET


class AssistantOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    description: str
    system_prompt: str
    default_model: str
    complex_model: str | None
    thinking_budget: int | None
    created_at: datetime
    updated_at: datetime


# A function name Gemini accepts; "handoff" is the built-in tool's.
ToolName = Annotated[str, msgspec.Meta(pattern=r"^(?!handoff$)[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")]
Url = Annotated[
    str, msgspec.Meta(min_length=8, max_length=2000, pattern=r"^https?://[^\x00-\x20]+$")
]
TimeoutMs = Annotated[int, msgspec.Meta(ge=100, le=120_000)]
ResultBytes = Annotated[int, msgspec.Meta(ge=16, le=1_000_000)]


class ToolIn(_In):
    """A webhook the assistant may call; ``url`` must be under ``TOOL_URL_ALLOWLIST``."""

    name: ToolName
    description: Description
    parameters: dict[str, Any]  # JSON Schema of the arguments, "type": "object"
    url: Url
    timeout_ms: TimeoutMs = 10_000
    idempotent: bool = False  # retried (same X-Chat-Tool-Call id) when a call fails
    max_result_bytes: ResultBytes = 16_384


class ToolPatch(_In):
    name: ToolName | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    parameters: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    url: Url | msgspec.UnsetType = msgspec.UNSET
    timeout_ms: TimeoutMs | msgspec.UnsetType = msgspec.UNSET
    idempotent: bool | msgspec.UnsetType = msgspec.UNSET
    max_result_bytes: ResultBytes | msgspec.UnsetType = msgspec.UNSET


class ToolOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    assistant_id: uuid.UUID
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    # Signs every call: X-Chat-Signature "t=<unix seconds>,v1=<hex HMAC-SHA256 of
    # '<t>.<body>'>". Shown to the owner only.
    secret: str
    timeout_ms: int
    idempotent: bool
    max_result_bytes: int
    created_at: datetime


class SkillIn(_In):
    name: Name
    description: Description
    threshold: Threshold | None = None  # the embedder's default_threshold when omitted


class SkillPatch(_In):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    threshold: Threshold | msgspec.UnsetType = msgspec.UNSET


class SkillOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    assistant_id: uuid.UUID
    name: str
    description: str
    threshold: float
    examples: int  # example utterances, given (POST .../examples) or learned (feedback)


class ExampleIn(_In):
    """An utterance that belongs to the skill, in the words a user would type."""

    text: Description


class ExampleOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    skill_id: uuid.UUID
    text: str
    source: str  # example (given here) | feedback (learned from a misroute)
    created_at: datetime


class ConversationIn(_In):
    title: Title | None = None
    assistant_id: uuid.UUID | None = None


class ConversationPatch(_In):
    title: Title | None  # the new title (null: untitled)


class ConversationOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    title: str | None
    assistant_id: uuid.UUID | None
    last_seq: int
    leaf_id: uuid.UUID | None  # the newest message of the branch shown
    created_at: datetime
    updated_at: datetime


class BranchIn(_In):
    """Show the branch through ``message_id`` or its ``alternative``-th sibling."""

    message_id: uuid.UUID
    alternative: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None


class ConversationPage(msgspec.Struct, kw_only=True):
    items: list[ConversationOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page


class MessagePage(msgspec.Struct, kw_only=True):
    messages: list[MessageInfo]  # oldest first
    has_more: bool  # older messages exist: ?before_seq=<first seq>


class RouteIn(_In):
    text: TurnText
    conversation_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None


class Candidate(msgspec.Struct, kw_only=True):
    skill_id: uuid.UUID
    skill: str
    assistant_id: uuid.UUID
    assistant: str
    score: float
    threshold: float
    via_example: bool


class AssistantRefOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str


class RouteOut(msgspec.Struct, kw_only=True):
    assistant: AssistantRefOut
    model: str
    reason: str  # explicit | skill | default | fallback
    skill: str | None
    skill_id: uuid.UUID | None
    score: float | None
    # In [0, 1], calibrated per team: how much more the turn looks like the best skill's
    # work than small talk does (None when no skill was matched).
    confidence: float | None
    language: str
    kind: str
    complexity: str
    thinking_budget: int  # 0 off, -1 the model decides
    why: str
    candidates: list[Candidate]  # nearest skills, best first


class FeedbackIn(_In):
    """``message_id`` is the misrouted user turn (or its reply); ``assistant_id`` the
    assistant that should have answered; ``skill_id`` optionally the skill it fits."""

    message_id: uuid.UUID
    assistant_id: uuid.UUID
    skill_id: uuid.UUID | None = None


class FeedbackOut(msgspec.Struct, kw_only=True):
    skill_id: uuid.UUID
    example_id: uuid.UUID
    created_skill: bool  # the assistant had no skill: one was made from the turn


class UsageOut(msgspec.Struct, kw_only=True):
    day: str  # the UTC day counted (YYYY-MM-DD)
    input_tokens: int
    output_tokens: int
    used: int  # input + output
    quota: int | None  # tokens a day (None: no quota)
    resets_in_ms: int  # until the next 00:00 UTC
