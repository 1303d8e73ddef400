"""What one connection receives from the conversations it joined, and the I/O that
keeps it exactly once: the feeds, the replay after a join, the repair of gaps.

Every conversation event goes through its ``ConversationFeed`` (pure: each stored
message once by seq, each reply's text once by offset, gaps named), then speech
chunking if asked for, then the connection's outbox. A gap (a delta ahead of what was
sent, or events lost while the bus was reconnecting) is repaired here from the shared
in-flight state and Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import conversations
from chat_server.feed import ConversationFeed, FeedState, Replies
from chat_server.hub import Event
from chat_server.inflight import Inflight, InflightTurn, started
from chat_server.metrics import Metrics
from chat_server.smooth import Smoother
from chat_server.speech import Speech
from chat_server.storage import queries
from chat_server.wire import conversation_info, message_info
from protocol.errors import CloseCode
from protocol.messages import Delta, Join, Joined, Message, SessionOptions

log = logging.getLogger(__name__)


class Delivery:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        inflight: Inflight,
        buffer_limit: int,
        replay_limit: int,
        replay_bytes: int,
        enqueue: Callable[[Event], None],
        close: Callable[[CloseCode, str], None],
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._inflight = inflight
        self._buffer_limit = buffer_limit
        self._replay_limit = replay_limit
        self._replay_bytes = replay_bytes
        self._enqueue = enqueue
        self._close = close
        self.feeds: dict[uuid.UUID, ConversationFeed] = {}
        self.replies = Replies()  # how much of each reply was queued, across feeds
        self.speech: Speech | None = None  # with hello.options.speech_chunks
        self.thoughts = False  # with hello.options.thoughts: thought events are sent
        self.smooth: Smoother | None = None  # with hello.options.smooth_streaming
        # Made on first use: most connections never repair, and an empty set is 216 bytes
        # of every idle connection.
        self._repairing: set[uuid.UUID] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None

    def configure(self, options: SessionOptions, emit: Callable[[Event], None]) -> None:
        """The filters ``hello.options`` asked for: speech chunks (which win over smooth
        streaming: phrases, not words), smooth streaming, thought events."""
        self.thoughts = options.thoughts
        if options.speech_chunks:
            self.speech = Speech(emit, options.speech_max_wait_ms / 1000)
        elif options.smooth_streaming:
            self.smooth = Smoother(emit)

    def open(self, conversation_id: uuid.UUID, offsets: dict[uuid.UUID, int]) -> ConversationFeed:
        """A feed for a conversation being joined (REPLAYING); ``offsets``: how much of
        each streaming reply the device already has."""
        feed = self.feeds[conversation_id] = ConversationFeed(
            conversation_id, self.replies, buffer_limit=self._buffer_limit
        )
        self.replies.offsets.update(offsets)
        return feed

    async def join(self, join: Join, feed: ConversationFeed, owner_id: uuid.UUID) -> None:
        """Send joined, the stored events after ``after_seq``, the replies still streaming,
        then the live events that arrived meanwhile, each exactly once. The caller
        subscribed before this reads anything, so nothing falls in between."""
        limit, conversation_id = self._replay_limit, feed.conversation_id
        after = join.after_seq
        conversation = await conversations.owned_now(self._db, owner_id, conversation_id)
        rows: list[queries.Placed] = []
        if after is not None and after < conversation.last_seq:  # else nothing was missed
            async with self._db.begin() as s:
                rows = await queries.messages_after(s, conversation_id, after, limit + 1)
        # Everything that can fail is read before ``joined`` goes out: a device told it
        # joined must be joined.
        running = await self.running(conversation_id)
        # A replay too big for the outbox would close the device as slow, and its rejoin
        # would do the same again: past half the outbox it is recovered:false (history).
        recovered = (
            join.after_seq is not None
            and len(rows) <= limit
            and sum(len(row.text) for row, _, _ in rows) <= self._replay_bytes
        )
        # A fresh join (or one that missed too much) starts at the present.
        feed.floor = (
            join.after_seq if recovered and join.after_seq is not None else conversation.last_seq
        )
        info = conversation_info(conversation)
        joined = Joined(id=join.id, conversation=info, last_seq=info.last_seq, recovered=recovered)
        outcome = "fresh" if join.after_seq is None else str(recovered).lower()
        self._metrics.joins.labels(self._metrics.replica, outcome).inc()
        self._enqueue(Event.reply(joined))
        if recovered:
            self._accept_rows(conversation_id, rows)
        for turn in running:
            self._catch_up(turn)
        for event in feed.go_live():
            self.accept(event)

    def deliver(self, event: Event) -> None:
        """Called by the hub for every event of a joined conversation; never blocks."""
        feed = self.feeds.get(event.conversation_id) if event.conversation_id else None
        if feed is None or (event.kind == "thought" and not self.thoughts):
            return
        if feed.state is FeedState.REPLAYING:
            if not feed.hold(event):
                self._close(CloseCode.SLOW_CONSUMER, "too many events during join")
            return
        self.accept(event)

    def accept(self, event: Event) -> None:
        """A conversation event through its feed (exactly once by seq and offset), then
        speech chunking and the outbox; a gap the feed found is repaired."""
        feed = self.feeds.get(event.conversation_id) if event.conversation_id else None
        if feed is None:
            return
        accepted = feed.accept(event)
        if accepted.repair is not None and accepted.repair not in (self._repairing or ()):
            self._metrics.gap_repairs_c.inc()
            self._repairing = self._repairing or set()
            self._repairing.add(accepted.repair)
            self._spawn(self._repair(feed.conversation_id, accepted.repair))
        for out in accepted.events:
            if self.speech is not None and out.turn_id is not None:
                if out.kind == "delta":
                    self.speech.push(out)
                    continue
                if out.kind in ("message", "turn_end"):
                    self.speech.end(out.turn_id)  # what it holds goes out first
            elif self.smooth is not None and out.turn_id is not None:
                if out.kind == "delta":
                    self.smooth.push(out)
                    continue
                if out.kind in ("message", "turn_end") and self.smooth.holds(out.turn_id):
                    self.smooth.end(out)  # after the text it still holds
                    continue
            self._enqueue(out)

    async def running(self, conversation_id: uuid.UUID) -> list[InflightTurn]:
        """The replies streaming in the conversation, oldest first. With the shared state
        away (Redis down) none are known: a join still succeeds from Postgres, and the
        resync after the bus reconnects brings whatever was missed."""
        try:
            turns = await self._inflight.active(conversation_id)
        except Exception:
            log.warning("in-flight replies unavailable; joining without them", exc_info=True)
            return []
        return sorted(turns, key=lambda t: started(t).seq)

    def resync(self, conversation_id: uuid.UUID) -> None:
        """The bus reconnected: events may have been lost."""
        feed = self.feeds.get(conversation_id)
        if feed is not None and feed.state is FeedState.LIVE:
            self._spawn(self._resync(conversation_id))

    def close(self) -> None:
        for task in list(self._tasks or ()):
            task.cancel()
        if self.speech is not None:
            self.speech.close()
        if self.smooth is not None:
            self.smooth.close()

    def _accept_rows(self, conversation_id: uuid.UUID, rows: list[queries.Placed]) -> None:
        for row, *place in rows:
            if row.status != "streaming":  # streaming ones come from the in-flight state
                message = Message(
                    conversation_id=conversation_id, seq=row.seq, message=message_info(row, *place)
                )
                self.accept(Event.of(message))

    def _catch_up(self, turn: InflightTurn) -> None:
        """A reply streaming elsewhere: its turn_start, then its text so far as one delta."""
        self.accept(Event.of(started(turn)))
        if turn.text:
            delta = Delta(
                conversation_id=turn.conversation_id,
                turn_id=turn.turn_id,
                offset=0,
                text=turn.text,
            )
            self.accept(Event.of(delta))

    async def _resync(self, conversation_id: uuid.UUID) -> None:
        feed = self.feeds.get(conversation_id)
        if feed is None:
            return
        limit = self._replay_limit
        async with self._db.begin() as s:
            rows = await queries.messages_after(s, conversation_id, feed.floor, limit + 1)
        if len(rows) > limit:
            self._close(CloseCode.RESUME_REQUIRED, "too many events missed; resume")
            return
        self._accept_rows(conversation_id, rows)
        for turn in await self.running(conversation_id):
            self._catch_up(turn)

    async def _repair(self, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        """A delta arrived ahead of the text sent so far: fetch the text it follows."""
        try:
            turn = await self._inflight.get(turn_id)
            if turn is not None:
                self._catch_up(turn)
            else:  # finished meanwhile: its final text is in Postgres
                await self._resync(conversation_id)
        finally:
            if self._repairing is not None:
                self._repairing.discard(turn_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks = self._tasks or set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("repair failed: %r", task.exception())
