"""The tools of one reply: what the model is offered (the assistant's webhooks, and the
built-in ``handoff`` when it has teammates), the calls it makes run in parallel and
published as ``tool_call``/``tool_result`` events to every device, and the record of
them stored with the reply (``MessageInfo.tools``), which the next model request reads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from chat_server import tools
from chat_server.hub import Hub
from chat_server.llm import FunctionCall, ToolDeclaration
from chat_server.storage import teams
from chat_server.storage.models import Assistant
from chat_server.tools import HANDOFF, Outcome, Webhooks, failed
from protocol.messages import ErrorInfo, ToolCall, ToolCallInfo, ToolResult, TurnStart

if TYPE_CHECKING:
    from chat_server.turns.generation import Context


MAX_PARALLEL = 16  # calls of one model response run at once; more are refused


@dataclass(frozen=True, slots=True)
class Kit:
    """What an assistant may call: its webhooks, and its team (whom it may hand to)."""

    webhooks: list[tools.Tool]
    team: list[Assistant]

    def toolbox(
        self, context: Context, start: TurnStart, *, visited: tuple[uuid.UUID, ...]
    ) -> ToolBox:
        """The reply's tools: the handoff offers every teammate that has not answered
        this user turn yet (no A -> B -> A)."""
        done = {*visited, start.assistant.id}
        return ToolBox(
            hub=context.hub,
            webhooks=context.webhooks,
            conversation_id=start.conversation_id,
            turn_id=start.turn_id,
            webhook_tools=self.webhooks,
            teammates={a.name: a.id for a in self.team if a.id not in done},
        )


async def equip(s: AsyncSession, owner_id: uuid.UUID, assistant_id: uuid.UUID) -> Kit:
    team, rows = await teams.team_and_tools(s, owner_id, assistant_id)
    return Kit([tools.Tool.of(row) for row in rows], team)


@dataclass(frozen=True, slots=True)
class Handoff:
    """The model handed the conversation to a teammate."""

    assistant_id: uuid.UUID
    name: str
    reason: str


class ToolBox:
    def __init__(
        self,
        *,
        hub: Hub,
        webhooks: Webhooks | None,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID,
        webhook_tools: Sequence[tools.Tool] = (),
        teammates: dict[str, uuid.UUID] | None = None,
    ) -> None:
        self._hub = hub
        self._webhooks = webhooks
        self._conversation_id = conversation_id
        self._turn_id = turn_id
        self._tools = {t.name: t for t in webhook_tools}
        self._teammates = teammates or {}  # those it may hand to: not itself, not earlier
        self._named = 0
        self._open: dict[str, ToolCallInfo] = {}  # called, no outcome yet
        self.log: list[ToolCallInfo] = []  # every call of the reply with its outcome
        self.handoff: Handoff | None = None

    def declarations(self) -> list[ToolDeclaration]:
        offered = [t.declaration() for t in self._tools.values()]
        if self._teammates:
            offered.append(tools.handoff_declaration(sorted(self._teammates)))
        return offered

    def named(self, calls: Sequence[FunctionCall]) -> list[FunctionCall]:
        """The calls with an id each (Gemini may leave it out), unique in the reply."""
        out = []
        for call in calls:
            self._named += 1
            name = call.id or f"{self._turn_id.hex[:8]}-{self._named}"
            out.append(FunctionCall(name, call.name, call.args))
        return out

    async def run(self, calls: Sequence[FunctionCall], offset: int) -> list[Outcome]:
        """Announce every call, run them at once, announce each outcome as it comes; the
        outcomes in the calls' order. A handoff is taken alone: the reply ends. Past
        ``MAX_PARALLEL`` calls in one response the rest are refused, not sent."""
        for call in calls:
            info = ToolCallInfo(call_id=call.id, name=call.name, arguments=call.args, offset=offset)
            self._open[call.id] = info
            await self._hub.publish(
                ToolCall(
                    conversation_id=self._conversation_id,
                    turn_id=self._turn_id,
                    call_id=call.id,
                    name=call.name,
                    arguments=call.args,
                    offset=offset,
                )
            )
        handoff = next((c for c in calls if c.name == HANDOFF), None)
        if handoff is not None:
            taken = self._hand(handoff)
            skipped = failed("tool_skipped", "the conversation was handed to a teammate")
            outcomes = [taken if c is handoff else skipped for c in calls]
            for call, outcome in zip(calls, outcomes, strict=True):
                await self._settle(call, outcome)
            return outcomes
        refused = failed("tool_skipped", f"more than {MAX_PARALLEL} calls at once")
        return list(
            await asyncio.gather(
                *(
                    self._one(call) if n < MAX_PARALLEL else self._settle(call, refused)
                    for n, call in enumerate(calls)
                )
            )
        )

    def _hand(self, call: FunctionCall) -> Outcome:
        name = str(call.args.get("assistant", ""))
        target = self._teammates.get(name)
        if target is None:
            choices = ", ".join(sorted(self._teammates)) or "nobody"
            return failed(
                "tool_bad_arguments", f"{name!r} is not a teammate to hand to ({choices})"
            )
        self.handoff = Handoff(target, name, str(call.args.get("reason", ""))[:500])
        return Outcome(True, result={"handed_to": name})

    async def _one(self, call: FunctionCall) -> Outcome:
        tool = self._tools.get(call.name)
        if tool is None or self._webhooks is None:
            outcome = failed("tool_unknown", f"there is no tool named {call.name!r}")
        else:
            context = {"conversation_id": str(self._conversation_id), "turn_id": str(self._turn_id)}
            outcome = await self._webhooks.call(tool, call, context)
        return await self._settle(call, outcome)

    async def _settle(self, call: FunctionCall, outcome: Outcome) -> Outcome:
        """Record a call's outcome and announce it; returns it."""
        error = _error(outcome)
        called = self._open.pop(call.id)
        self.log.append(
            msgspec.structs.replace(called, ok=outcome.ok, result=outcome.result, error=error)
        )
        await self._hub.publish(
            ToolResult(
                conversation_id=self._conversation_id,
                turn_id=self._turn_id,
                call_id=call.id,
                name=call.name,
                ok=outcome.ok,
                result=outcome.result,
                error=error,
            )
        )
        return outcome

    def record(self) -> list[ToolCallInfo]:
        """Every call for the stored reply; one still open (the reply was cancelled or
        failed while it ran) is recorded as cancelled."""
        cancelled = ErrorInfo(code="tool_cancelled", message="the reply ended first")
        still_open = (msgspec.structs.replace(c, error=cancelled) for c in self._open.values())
        return [*self.log, *still_open]


def _error(outcome: Outcome) -> ErrorInfo | None:
    if outcome.ok:
        return None
    return ErrorInfo(code=outcome.code or "tool_failed", message=outcome.message or "")
