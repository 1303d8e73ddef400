"""The end of a reply: its one final write and its one ``turn_end``, for the replica
generating it and for a sweeper ending the reply of a replica that died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.hub import Hub
from chat_server.inflight import Inflight
from chat_server.storage import queries
from chat_server.storage.models import Message as MessageRow
from chat_server.turns.history import Windows
from chat_server.wire import message_info, to_builtins
from protocol.messages import (
    ErrorInfo,
    FinishReason,
    MessageStatus,
    ToolCallInfo,
    TurnEnd,
    Usage,
)

log = logging.getLogger("chat_server.turns")

STATUS = {
    FinishReason.STOP: MessageStatus.COMPLETE,
    FinishReason.LENGTH: MessageStatus.COMPLETE,
    FinishReason.SAFETY: MessageStatus.COMPLETE,
    FinishReason.CANCELLED: MessageStatus.INTERRUPTED,
    FinishReason.INTERRUPTED: MessageStatus.INTERRUPTED,
    FinishReason.QUOTA: MessageStatus.INTERRUPTED,
    FinishReason.HANDOFF: MessageStatus.COMPLETE,
}  # any other finish (an error) stores the reply as ``error``


class Finals:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        hub: Hub,
        inflight: Inflight,
        windows: Windows,
    ) -> None:
        self._db = db
        self._hub = hub
        self._inflight = inflight
        self.windows = windows

    async def store_end(
        self,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID,
        text: str,
        finish: FinishReason,
        usage: Usage,
        error: ErrorInfo | None,
        tools: list[ToolCallInfo] | None = None,
        *,
        swept: bool = False,
        window: list[MessageRow] | None = None,
    ) -> bool:
        """Write the final reply, announce it, forget it. True if this write won.

        ``window``: the stored messages the model read for this reply; with the reply's
        row they are the next turn's window, kept before devices hear of the end (a
        device may send its next turn at once).

        The first writer wins, except that the generating replica's own write replaces
        a sweeper's with less text (a sweeper that judged a live reply dead): a stored
        reply is never shorter than what devices were shown. The write is retried until
        Postgres takes it, so a reply never stays ``streaming``; meanwhile the turn is
        still this replica's and its lease is renewed."""
        meta: dict[str, Any] = {"finish_reason": finish, "usage": to_builtins(usage)}
        if error is not None:
            meta["error"] = to_builtins(error)
        if tools:
            meta["tools"] = to_builtins(tools)  # the model's next request reads them
        status = STATUS.get(finish, MessageStatus.ERROR)
        placed = await self._write(turn_id, text, status, meta, usage, swept=swept)
        if placed is not None:  # else already finished elsewhere; its turn_end went out then
            if window is not None:
                row = placed[0]
                self.windows.keep(conversation_id, turn_id, [*window, row] if row.text else window)
            await self._hub.publish(
                TurnEnd(
                    conversation_id=conversation_id,
                    seq=placed[0].seq,
                    turn_id=turn_id,
                    message=message_info(*placed),
                    finish_reason=finish,
                    usage=usage,
                    error=error,
                )
            )
        with contextlib.suppress(Exception):
            await self._inflight.end(turn_id, conversation_id)
        return placed is not None

    async def _write(
        self,
        turn_id: uuid.UUID,
        text: str,
        status: MessageStatus,
        meta: dict[str, Any],
        usage: Usage,
        *,
        swept: bool,
    ) -> queries.Placed | None:
        """The final write, and the reply's tokens added to its owner's usage of the day
        in the same transaction (only by the write that wins: counted once)."""
        delay, warned_at = 0.1, 0.0
        # Thinking is billed as output, so a quota counts it there.
        spent = (usage.input_tokens, usage.output_tokens + usage.thought_tokens)
        while True:
            try:
                async with self._db.begin() as s:
                    return await queries.finish_reply(
                        s, turn_id, text=text, status=status, meta=meta, swept=swept, usage=spent
                    )
            except Exception as exc:  # Postgres away or restarting: keep trying
                if time.monotonic() - warned_at > 30:
                    warned_at = time.monotonic()
                    log.warning("final write of turn %s failed, retrying: %r", turn_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
