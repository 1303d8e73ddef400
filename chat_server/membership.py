"""The conversations one connection has joined, and the I/O of joining and leaving.

A join creates the conversation if asked, subscribes in the hub *before* anything is
read (events published meanwhile wait in the feed), replays what the device missed
through ``Delivery``, then enters presence. A leave undoes each step. The session
dispatches frames; this keeps the hub, the feeds and presence in step for it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

from chat_server import conversations
from chat_server.delivery import Delivery
from chat_server.hub import Subscriber
from chat_server.presence import Device
from chat_server.runtime import Runtime
from protocol.errors import ErrorCode, ErrorReply
from protocol.messages import Join

log = logging.getLogger(__name__)

MAX_JOINED = 64  # conversations one connection may join at once


class Member(Subscriber, Protocol):
    @property
    def device(self) -> Device: ...


class Membership:
    __slots__ = ("_delivery", "_member", "_rt")  # one per connection

    def __init__(self, runtime: Runtime, member: Member, delivery: Delivery) -> None:
        self._rt = runtime
        self._member = member
        self._delivery = delivery

    def __contains__(self, conversation_id: uuid.UUID) -> bool:
        return conversation_id in self._delivery.feeds

    def conversations(self) -> list[uuid.UUID]:
        return list(self._delivery.feeds)

    async def join(self, join: Join, owner_id: uuid.UUID) -> None:
        if (join.conversation_id is None) == (join.create is None):
            raise ErrorReply(
                ErrorCode.BAD_MESSAGE, "join needs exactly one of conversation_id, create"
            )
        feeds = self._delivery.feeds
        if join.conversation_id not in feeds and len(feeds) >= MAX_JOINED:
            raise ErrorReply(
                ErrorCode.BAD_MESSAGE, f"at most {MAX_JOINED} conversations per connection"
            )
        if join.create is not None:
            async with self._rt.db.begin() as s:
                created = await conversations.create(
                    s, owner_id, title=join.create.title, assistant_id=join.create.assistant_id
                )
            conversation_id = created.id
        else:
            assert join.conversation_id is not None
            conversation_id = join.conversation_id
        await self.leave(conversation_id)  # a repeated join starts over
        feed = self._delivery.open(conversation_id, join.offsets or {})
        # Subscribe first, then check and read: events published meanwhile wait in the
        # feed (REPLAYING), and nothing is sent before the check.
        await self._rt.hub.join(conversation_id, self._member)
        try:
            await self._delivery.join(join, feed, owner_id)
        except BaseException:
            feeds.pop(conversation_id, None)
            await self._rt.hub.leave(conversation_id, self._member)
            raise
        self._rt.metrics.joined.inc()
        try:
            await self._rt.presence.enter(conversation_id, self._member.device)
        except Exception:  # presence is best effort (Redis away); the refresh re-adds it
            log.warning("presence update on join failed", exc_info=True)

    async def leave(self, conversation_id: uuid.UUID) -> None:
        if self._delivery.feeds.pop(conversation_id, None) is not None:
            self._rt.metrics.joined.dec()
            await self._rt.hub.leave(conversation_id, self._member)
            try:
                await self._rt.presence.leave(conversation_id, self._member.device)
            except Exception:  # presence is best effort; its TTL cleans up
                log.warning("presence update on leave failed", exc_info=True)

    async def leave_all(self) -> None:
        for conversation_id in self.conversations():
            await self.leave(conversation_id)
