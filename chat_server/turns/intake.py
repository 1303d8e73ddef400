"""Intake: a user turn from text to a committed row and a generation ready to start.

Validate, embed, route and store in one transaction. The result carries the ``ack``
(the turn is committed: the device may drop it from its outbox) and the generation
that answers it; ``Turns.submit`` hands the ack over before it starts the generation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server import conversations, router
from chat_server.config import Settings
from chat_server.errors import ChatError
from chat_server.inflight import Inflight
from chat_server.llm import ChatTurn
from chat_server.router import learning
from chat_server.router.embedding import Embedder
from chat_server.storage import queries
from chat_server.storage.models import Conversation
from chat_server.storage.models import Message as MessageRow
from chat_server.turns import quota
from chat_server.turns.generation import Context, Generation
from chat_server.turns.history import chat_turns
from chat_server.turns.toolbox import Kit, equip
from chat_server.wire import (
    conversation_updated,
    message_info,
    route_info,
    to_builtins,
)
from protocol.errors import ErrorCode
from protocol.messages import (
    Ack,
    AssistantRef,
    MessageInfo,
    Regenerate,
    RouteInfo,
    Send,
    TurnStart,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A turn worked out ahead (early routing, while a voice user is still speaking):
    the route and the model history, as of ``last_seq`` with ``leaf_id`` shown."""

    conversation_id: uuid.UUID
    decision: router.Decision
    history: list[ChatTurn]
    last_seq: int
    leaf_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class TurnRequest:
    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    client_id: str
    text: str
    assistant_id: uuid.UUID | None = None
    prepared: Prepared | None = None
    edit_of: uuid.UUID | None = None  # the user turn this one corrects (a new branch)
    regenerate: uuid.UUID | None = None  # answer this user turn again (``text`` unused)

    @classmethod
    def of(cls, owner_id: uuid.UUID, message: Send | Regenerate) -> TurnRequest:
        """The turn a ``send`` (a new turn, or an edit) or a ``regenerate`` asks for."""
        cid, assistant = message.conversation_id, message.assistant_id
        if isinstance(message, Regenerate):
            return cls(owner_id, cid, message.id, "", assistant, regenerate=message.reply_to)
        return cls(owner_id, cid, message.id, message.text, assistant, edit_of=message.edit_of)


@dataclass(frozen=True, slots=True)
class Stored:
    """A committed user turn: its ack, its row (placed among its alternatives), and the
    generation that will answer it (None for a duplicate, already answered or being
    answered)."""

    ack: Ack
    user_message: MessageRow
    generation: Generation | None
    announce: MessageInfo | None = None  # the new user turn's ``message``, to publish


class Intake:
    def __init__(
        self,
        *,
        db: async_sessionmaker[AsyncSession],
        inflight: Inflight,
        embedder: Embedder,
        settings: Settings,
        context: Context,
    ) -> None:
        self._db = db
        self._inflight = inflight
        self.embedder = embedder
        self.matcher = router.Matcher(embedder)
        self.thinking = router.Thinking(settings.thinking_budget, settings.fast_thinking_budget)
        self._settings = settings
        self._context = context

    async def embed_turn(self, text: str) -> list[float] | None:
        """The turn's vector for skill matching; None (route without skills) on failure."""
        try:
            return (await self.embedder.embed([text]))[0]
        except Exception:
            log.warning("embedding failed; routing without skills", exc_info=True)
            return None

    async def prepare(
        self, *, owner_id: uuid.UUID, conversation_id: uuid.UUID, text: str
    ) -> Prepared:
        """Do ahead what a turn needs before its text is final: routing and history.
        While a reply is streaming the history is not final either: then only the
        route is prepared (``last_seq`` -1 makes ``store`` load the history)."""
        vector = await self.embed_turn(text)
        async with self._db.begin() as s:
            conversation, decision = await self._decide(
                s, owner_id, conversation_id, text, vector, None
            )
            rows = await queries.context_window(
                s,
                conversation_id,
                tip=conversation.leaf_id,
                limit=self._settings.history_messages - 1,
            )
        settled = not await self._inflight.active(conversation_id)
        last_seq = conversation.last_seq if settled else -1
        return Prepared(conversation_id, decision, chat_turns(rows), last_seq, conversation.leaf_id)

    async def store(self, request: TurnRequest) -> Stored:
        """Validate, route and commit a user turn (or, with ``regenerate``, a new reply
        placeholder for an earlier one).

        With ``prepared`` (and no explicit assistant) the route is not worked out again,
        and if nothing was stored in between, neither is the history."""
        conversation_id = request.conversation_id
        if request.regenerate is not None:
            async with self._db.begin() as s:  # its text, to route it again
                await conversations.owned(s, request.owner_id, conversation_id)
                turn = await conversations.user_turn(s, conversation_id, request.regenerate)
            text = turn.text
        else:
            text = request.text
            self._check_text(text)
        prepared = request.prepared
        if (
            request.assistant_id is not None
            or request.edit_of is not None
            or (prepared and prepared.conversation_id != conversation_id)
        ):
            prepared = None
        # The embedding (in its thread) overlaps the limits' round trips: the ack waits
        # for the longer of the two, not for both.
        embedding = (
            None
            if prepared or request.assistant_id
            else asyncio.ensure_future(self.embed_turn(text))
        )
        async with self._db.begin() as s:
            try:
                budget = await self._within_limits(s, request.owner_id)
            except BaseException:
                if embedding is not None:
                    embedding.cancel()
                raise
            if prepared is not None:
                decision = prepared.decision  # the session joined it: ownership is known
            else:
                vector = await embedding if embedding is not None else None
                _, decision = await self._decide(
                    s, request.owner_id, conversation_id, text, vector, request.assistant_id
                )
            route = route_info(decision)
            meta = {"model": decision.model, "route": to_builtins(route)}
            kit = await equip(s, request.owner_id, decision.assistant.id)
            if request.regenerate is not None:
                stored = await queries.store_regeneration(
                    s,
                    conversation_id,
                    client_id=request.client_id,
                    user_message=turn,
                    assistant_id=decision.assistant.id,
                    reply_meta=meta,
                )
            else:
                edit = None
                if request.edit_of is not None:
                    edit = await conversations.user_turn(s, conversation_id, request.edit_of)
                stored = await queries.store_turn(
                    s,
                    conversation_id,
                    client_id=request.client_id,
                    text=text,
                    assistant_id=decision.assistant.id,
                    reply_meta=meta,
                    edit_of=edit,
                )
        user, reply = stored.user_message, stored.reply
        if reply is None:  # a resend: the first one's ack (a regenerate's: its reply)
            ack = Ack(id=request.client_id, message_id=user.id, seq=user.seq, duplicate=True)
            return Stored(ack, user, None)
        regenerating = request.regenerate is not None
        acked = reply if regenerating else user
        ack = Ack(id=request.client_id, message_id=acked.id, seq=acked.seq)
        history, window = None, None
        if (
            prepared is not None
            and prepared.last_seq == user.seq - 1
            and prepared.leaf_id == user.parent_id
        ):
            history = [*prepared.history, ChatTurn("user", text)]
        elif not regenerating:
            window = self._context.finals.windows.after(conversation_id, user)
        generation = self._generation(
            reply,
            decision,
            route,
            alternatives=stored.reply_place[1],
            budget=budget,
            kit=kit,
            owner_id=request.owner_id,
            history=history,
            window=window,
        )
        announce = None if regenerating else message_info(user, *stored.user_place)
        return Stored(ack, user, generation, announce)

    async def hand_over(self, previous: Generation) -> Generation:
        """The teammate's reply after a handoff: stored after the reply that handed over
        (same user turn), routed to the teammate (the route says who handed over and
        why), the conversation now theirs, and the user turn learned as theirs."""
        handoff, owner_id = previous.tools.handoff, previous.owner_id
        assert handoff is not None
        assert owner_id is not None
        cid, user_id = previous.conversation_id, previous.start.reply_to
        async with self._db.begin() as s:
            user = await conversations.user_turn(s, cid, user_id)
            # The handed-over turn was admitted already: no concurrency check (its reply
            # slot passes on), only the quota it may still spend (spent: it ends "quota").
            budget = await self._tokens_left(s, owner_id)
            conversation, decision = await self._decide(
                s, owner_id, cid, user.text, None, handoff.assistant_id
            )
            route = msgspec.structs.replace(
                route_info(decision),
                reason="handoff",
                handoff_from=previous.start.assistant.id,
                handoff_reason=handoff.reason,
                why=f"{previous.start.assistant.name} handed over to {decision.assistant.name}:"
                f" {handoff.reason}",
            )
            stored = await queries.store_regeneration(
                s,
                cid,
                client_id=f"handoff:{previous.turn_id}",
                user_message=user,
                assistant_id=decision.assistant.id,
                reply_meta={"model": decision.model, "route": to_builtins(route)},
                after=previous.turn_id,
            )
            conversation.default_assistant_id = decision.assistant.id
            kit = await equip(s, owner_id, decision.assistant.id)
        assert stored.reply is not None
        await self._context.hub.publish(conversation_updated(conversation))
        try:  # a handoff is feedback: the next turn like this goes to the teammate first
            await learning.learn_misroute(
                self._db,
                self.embedder,
                owner_id,
                message_id=user.id,
                assistant_id=decision.assistant.id,
                skill_id=None,
            )
        except Exception:
            log.warning("learning from the handoff of turn %s failed", user.id, exc_info=True)
        return self._generation(
            stored.reply,
            decision,
            route,
            budget=budget,
            kit=kit,
            owner_id=owner_id,
            visited=previous.visited,
        )

    def _generation(
        self,
        reply: MessageRow,
        decision: router.Decision,
        route: RouteInfo,
        *,
        budget: int | None,
        kit: Kit,
        owner_id: uuid.UUID,
        alternatives: int = 1,
        visited: tuple[uuid.UUID, ...] = (),
        history: list[ChatTurn] | None = None,
        window: list[MessageRow] | None = None,
    ) -> Generation:
        """The generation of a stored reply placeholder, announced by its turn_start."""
        assert reply.reply_to is not None
        start = TurnStart(
            conversation_id=reply.conversation_id,
            seq=reply.seq,
            turn_id=reply.id,
            reply_to=reply.reply_to,
            assistant=AssistantRef(id=decision.assistant.id, name=decision.assistant.name),
            model=decision.model,
            route=route,
            alternatives=alternatives,
        )
        return Generation(
            self._context,
            start,
            system_prompt=decision.assistant.system_prompt,
            history=history,
            window=window,
            token_budget=budget,
            tools=kit.toolbox(self._context, start, visited=visited),
            owner_id=owner_id,
            visited=visited,
        )

    def _check_text(self, text: str) -> None:
        if len(text) > self._settings.max_text_chars:
            raise ChatError(
                ErrorCode.TEXT_TOO_LONG,
                f"text is {len(text)} characters; the limit is {self._settings.max_text_chars}",
            )
        if not text.strip():
            raise ChatError(ErrorCode.BAD_MESSAGE, "text must not be empty")

    async def _within_limits(self, s: AsyncSession, owner_id: uuid.UUID) -> int | None:
        """The daily quota (quota_exceeded, with the reset time, when spent) and at most
        ``CONCURRENT_REPLIES`` replies streaming (else rate_limited), from one reading.
        Returns the tokens the owner may still spend today (None: no quota)."""
        settings = self._settings
        if not settings.limits:
            return None
        today = await quota.today(s, owner_id, settings.daily_token_quota)
        if today.quota is not None and today.used >= today.quota:
            raise ChatError(
                ErrorCode.QUOTA_EXCEEDED,
                f"the daily quota of {today.quota} tokens is spent; it resets at 00:00 UTC",
                retry_after_ms=quota.reset_ms(),
            )
        if today.streaming >= settings.concurrent_replies:
            self._context.metrics.limit_hit("concurrent_replies")
            raise ChatError(
                ErrorCode.RATE_LIMITED,
                f"{settings.concurrent_replies} replies are already streaming for you;"
                " wait for one to end",
                retry_after_ms=1000,
            )
        return today.left

    async def _tokens_left(self, s: AsyncSession, owner_id: uuid.UUID) -> int | None:
        if not self._settings.limits:
            return None
        return (await quota.today(s, owner_id, self._settings.daily_token_quota)).left

    async def _decide(
        self,
        s: AsyncSession,
        owner_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        vector: list[float] | None,
        assistant_id: uuid.UUID | None,
    ) -> tuple[Conversation, router.Decision]:
        """The caller's conversation (else not_found) and the router's decision in it."""
        conversation, decision = await conversations.route(
            s,
            owner_id,
            conversation_id,
            text=text,
            vector=vector,
            matcher=self.matcher,
            assistant_id=assistant_id,
            thinking=self.thinking,
        )
        assert conversation is not None
        return conversation, decision
