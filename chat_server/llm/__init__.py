"""Model providers: the ``LLMProvider`` protocol and the types it speaks.

``gemini.py`` is the only module that imports google.genai; ``simulator.py`` is a
Gemini-wire-compatible server for development, tests and load runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from protocol.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The model asks for a tool: ``id`` pairs it with its result."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FunctionResult:
    id: str
    name: str
    response: dict[str, Any]  # {"result": ...} or {"error": ...}, as Gemini expects


@dataclass(frozen=True, slots=True)
class ToolDeclaration:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments (an object)


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One content of the history: text, plus the model's tool calls (role model) or
    the tools' results (role user) when a reply used tools."""

    role: Literal["user", "model"]
    text: str
    calls: tuple[FunctionCall, ...] = ()
    results: tuple[FunctionResult, ...] = ()


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    system_prompt: str
    history: Sequence[ChatTurn]  # oldest first; the last one is the user's new turn
    max_output_tokens: int
    thinking_budget: int | None = None  # 0 off, -1 the model decides; None: the model's default
    include_thoughts: bool = False  # thought summaries, as ``LLMChunk.thought``
    tools: Sequence[ToolDeclaration] = ()  # functions the model may call


@dataclass(frozen=True, slots=True)
class LLMChunk:
    text: str
    # One of protocol.messages.FinishReason's values, on the last chunk only.
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    thought: str = ""  # a piece of the thought summary (never part of ``text``)
    thought_tokens: int | None = None
    calls: tuple[FunctionCall, ...] = ()  # tools the model calls (then it waits for them)


class LLMError(Exception):
    """The provider failed. ``code`` is the wire error code the reply ends with."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class LLMProvider(Protocol):
    """Streams one reply.

    Contract: ``stream`` yields text chunks in order; the last chunk carries
    ``finish_reason`` (a stream that ends without one was cut and the caller treats
    it as an error). Every provider failure, before or during the stream, is raised
    as ``LLMError``; cancelling the consuming task closes the upstream request.
    The provider does not time out stalls: the caller bounds the wait per chunk, and
    before the first chunk allows ``retry_budget_s`` more (the provider's own retries
    and their back-off happen there, and a 429 must surface as itself, not a stall).
    """

    retry_budget_s: float

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]: ...

    async def aclose(self) -> None: ...
