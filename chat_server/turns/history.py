"""What the model sees of a conversation: stored messages as its history."""

from __future__ import annotations

import itertools
from typing import Any

from chat_server.llm import ChatTurn, FunctionCall, FunctionResult
from chat_server.storage.models import Message as MessageRow
from chat_server.tools import Outcome


def chat_turns(rows: list[MessageRow]) -> list[ChatTurn]:
    """Stored messages as the model's history. A reply that called tools becomes what
    the model saw: its text up to each round of calls, the calls, their results, and
    the text after."""
    turns: list[ChatTurn] = []
    for row in rows:
        if row.role == "user":
            turns.append(ChatTurn("user", row.text))
            continue
        said, called = 0, False
        for offset, group in itertools.groupby(
            (row.meta or {}).get("tools") or [], key=lambda c: int(c["offset"])
        ):
            calls = list(group)
            asked = tuple(FunctionCall(c["call_id"], c["name"], c["arguments"]) for c in calls)
            results = tuple(FunctionResult(c["call_id"], c["name"], _response(c)) for c in calls)
            turns.append(ChatTurn("model", row.text[said:offset], calls=asked))
            turns.append(ChatTurn("user", "", results=results))
            said, called = offset, True
        if row.text[said:] or not called:
            turns.append(ChatTurn("model", row.text[said:]))
    return turns


def _response(call: dict[str, Any]) -> dict[str, Any]:
    """A stored call's outcome as the function response the model saw."""
    error = call.get("error") or {}
    ok, result = bool(call.get("ok")), call.get("result")
    return Outcome(ok, result, error.get("code"), error.get("message")).response()
