"""What the model sees of a conversation: stored messages as its history."""

from __future__ import annotations

import collections
import itertools
import uuid
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


class Windows:
    """This replica's model windows: per conversation, the stored messages the model
    would read for a turn after ``tip``, the reply this replica finished last there.

    A turn whose parent is that tip needs its own row added and nothing read: the
    branch up to the tip is what the window holds (messages are never rewritten once
    finished). A turn anywhere else (another replica's reply, a switch, an edit further
    up) misses and reads its branch from Postgres. Bounded: the least recently used
    conversations are forgotten."""

    def __init__(self, limit: int, conversations: int = 2000) -> None:
        self._limit = limit  # messages per window, as ``context_window`` reads them
        self._size = conversations
        self._windows: collections.OrderedDict[uuid.UUID, tuple[uuid.UUID, list[MessageRow]]] = (
            collections.OrderedDict()
        )

    def after(self, conversation_id: uuid.UUID, turn: MessageRow) -> list[MessageRow] | None:
        """The window for the new user turn ``turn`` (ending with it), or None if this
        replica does not know the branch above it."""
        held = self._windows.get(conversation_id)
        if held is None or turn.parent_id is None or held[0] != turn.parent_id:
            return None
        self._windows.move_to_end(conversation_id)
        return [*held[1], turn][-self._limit :]

    def keep(self, conversation_id: uuid.UUID, tip: uuid.UUID, rows: list[MessageRow]) -> None:
        """After the reply ``tip`` is finished: ``rows`` are its window (the reply's own
        row last, unless it has no text: the model never sees an empty reply)."""
        self._windows[conversation_id] = (tip, rows[-self._limit :])
        self._windows.move_to_end(conversation_id)
        while len(self._windows) > self._size:
            self._windows.popitem(last=False)
