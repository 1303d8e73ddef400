"""The Python client for chat-server (asyncio): a turn is never lost or stored twice.

The guarantees are the TypeScript client's (``clients/js``):

- ``send`` returns the server's ``ack``. Until the ack arrives, the turn waits in an
  outbox (in a JSON file if you pass ``outbox_path``, so it survives a restart). After
  any reconnect the turn is resent with the same id, so the server stores it exactly
  once.
- Reconnects use jittered exponential backoff and follow the close-code table:
  4000-4099 resume (after ``retry_after_ms`` when one is given), 4400-4499 stop and
  surface the error. ``go_away`` reconnects at once. With several replica URLs, a
  reconnect moves on to the next one.
- A resume sends ``after_seq``, and ``offsets`` for the replies still streaming. Deltas
  are applied by offset, so a repeated or overlapping delta changes nothing.
- ``state`` holds the conversations, their messages by seq and their replies by turn
  id, for a UI to render from; ``ConversationState.branch()`` is the branch shown
  (``regenerate``, ``send(edit_of=…)`` and ``switch`` make and pick branches).
  ``on(type, callback)`` sees every server message as it arrives, before it is applied.

Imports ``protocol`` (the typed wire messages) and ``websockets``, nothing of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import websockets

from protocol import decode_server, encode
from protocol.errors import CloseCode, should_reconnect
from protocol.messages import (
    Ack,
    AssistantRef,
    Cancel,
    ClientMessage,
    ConversationCreate,
    ConversationInfo,
    ConversationUpdated,
    Delta,
    Error,
    FinishReason,
    GoAway,
    Hello,
    History,
    HistoryPage,
    Input,
    Join,
    Joined,
    Message,
    MessageInfo,
    Presence,
    Regenerate,
    RouteInfo,
    Send,
    ServerMessage,
    SessionOptions,
    Switch,
    ToolCall,
    ToolCallInfo,
    ToolResult,
    TurnEnd,
    TurnStart,
    Usage,
    Welcome,
)

__all__ = ["ChatClient", "ChatClientError", "ClientState", "ConversationState", "Reply"]

ABNORMAL = 1006  # no close frame: the network dropped, or the connection never opened


class ChatClientError(Exception):
    """The server refused a request for good (a non-retryable error, or a close code
    that says stop)."""

    def __init__(self, code: str | int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Reply:
    turn_id: uuid.UUID
    seq: int
    assistant: AssistantRef
    model: str
    route: RouteInfo
    reply_to: uuid.UUID | None = None
    alternatives: int = 1  # replies to ``reply_to``, this one the newest
    text: str = ""
    tools: list[ToolCallInfo] = field(default_factory=list)  # its calls, outcomes once in
    done: bool = False
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass
class ConversationState:
    info: ConversationInfo
    last_seq: int = 0  # the highest seq received: a resume asks for what follows
    messages: dict[int, MessageInfo] = field(default_factory=dict)
    replies: dict[uuid.UUID, Reply] = field(default_factory=dict)
    devices: int = 0

    def branch(self) -> list[MessageInfo | Reply]:
        """The branch shown, oldest first: up from the leaf by parent links, as far as
        this client holds messages (older ones come with ``history``). A reply still
        streaming is its ``Reply``."""
        held: dict[uuid.UUID, MessageInfo | Reply] = {m.id: m for m in self.messages.values()}
        for reply in self.replies.values():
            held.setdefault(reply.turn_id, reply)
        path: list[MessageInfo | Reply] = []
        at = held.get(self.info.leaf_id) if self.info.leaf_id else None
        while at is not None:
            path.append(at)
            parent = at.parent_id if isinstance(at, MessageInfo) else at.reply_to
            at = held.get(parent) if parent else None
        return path[::-1]

    def grow(self, seq: int, message_id: uuid.UUID) -> None:
        """Every new message becomes the leaf; a replayed one (not newer than what
        ``joined`` described) does not, so a switch made meanwhile stays."""
        if seq > self.info.last_seq:
            self.info = msgspec.structs.replace(self.info, last_seq=seq, leaf_id=message_id)


@dataclass
class ClientState:
    status: str = "closed"  # connecting | open | reconnecting | closed
    user_id: str | None = None
    conversations: dict[uuid.UUID, ConversationState] = field(default_factory=dict)
    outbox: list[Send | Regenerate] = field(default_factory=list)
    error: ChatClientError | None = None


class ChatClient:
    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        options: SessionOptions | None = None,
        outbox_path: Path | None = None,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 10.0,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._urls = [url] if isinstance(url, str) else list(url)
        self._token = token
        self._options = options or SessionOptions()
        self._outbox_path = outbox_path
        self._backoff = (backoff_base_s, backoff_max_s)
        self._open_timeout_s = open_timeout_s
        self.state = ClientState()
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}  # request id → its answer
        self._sends: dict[str, asyncio.Future[Ack]] = {}  # outbox id → send()'s ack
        self._joined: list[uuid.UUID] = []  # rejoined on every reconnect
        self._ws: websockets.ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._open = asyncio.Event()
        self._stopped = False
        self._attempt = 0
        self._url_index = 0
        self._retry_after_s = 0.0
        if outbox_path is not None and outbox_path.exists():
            saved = json.loads(outbox_path.read_text())
            self.state.outbox = [msgspec.convert(entry, Send | Regenerate) for entry in saved]

    # ------------------------------------------------------------------ public

    def on(self, kind: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``callback`` with every server message of ``kind`` ("delta", …) or with
        the new status ("status"); returns a function that stops it."""
        self._listeners.setdefault(kind, []).append(callback)
        return lambda: self._listeners[kind].remove(callback)

    def next(self, kind: str, check: Callable[[Any], bool] = lambda m: True) -> asyncio.Future[Any]:
        """A future for the next ``kind`` message (or status) that passes ``check``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def seen(message: Any) -> None:
            if not future.done() and check(message):
                future.set_result(message)

        stop = self.on(kind, seen)
        future.add_done_callback(lambda _: stop())
        return future

    async def connect(self) -> None:
        """Connect and resume; returns once welcomed (raises if told to stop)."""
        self._stopped = False
        self._runner = asyncio.create_task(self._run(), name="chat-client")
        opened = asyncio.create_task(self._open.wait())
        await asyncio.wait([opened, self._runner], return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self.state.error is not None and self.state.status == "closed":
            raise self.state.error

    async def close(self) -> None:
        self._stopped = True
        self._set_status("closed")
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    async def drop(self) -> None:
        """Lose the connection the way a network does (no close frame): for tests and
        load runs. The client reconnects and resumes by itself."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def create(self, title: str | None = None) -> ConversationInfo:
        joined: Joined = await self._request(Join(create=ConversationCreate(title=title)))
        self._joined.append(joined.conversation.id)
        return joined.conversation

    async def join(self, conversation_id: uuid.UUID) -> ConversationInfo:
        joined: Joined = await self._request(self._join_frame(conversation_id))
        if conversation_id not in self._joined:
            self._joined.append(conversation_id)
        return joined.conversation

    async def send(
        self,
        conversation_id: uuid.UUID,
        text: str,
        assistant_id: uuid.UUID | None = None,
        *,
        edit_of: uuid.UUID | None = None,
    ) -> Ack:
        """A user turn (with ``edit_of``: a corrected version of an earlier one, on a new
        branch); returns its ack (the turn is stored), however many reconnects that
        takes."""
        frame = Send(
            id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            text=text,
            assistant_id=assistant_id,
            edit_of=edit_of,
        )
        return await self._enqueue(frame)

    async def regenerate(
        self, conversation_id: uuid.UUID, reply_to: uuid.UUID, assistant_id: uuid.UUID | None = None
    ) -> Ack:
        """A new reply to the user turn ``reply_to`` (the earlier ones stay as
        alternatives); returns the ack naming it. Kept in the outbox like a send."""
        frame = Regenerate(
            id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            reply_to=reply_to,
            assistant_id=assistant_id,
        )
        return await self._enqueue(frame)

    async def switch(
        self, conversation_id: uuid.UUID, message_id: uuid.UUID, alternative: int | None = None
    ) -> HistoryPage:
        """Show the branch through ``message_id`` (or its ``alternative``-th sibling);
        every device of the conversation follows. Returns a page of that branch."""
        frame = Switch(
            conversation_id=conversation_id, message_id=message_id, alternative=alternative
        )
        page: HistoryPage = await self._request(frame)
        return page

    async def _enqueue(self, frame: Send | Regenerate) -> Ack:
        self.state.outbox.append(frame)
        self._save_outbox()
        acked: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._sends[frame.id] = acked
        await self._transmit(frame)
        return await acked

    async def cancel(
        self,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID | None = None,
        heard_chars: int | None = None,
    ) -> None:
        await self._transmit(
            Cancel(conversation_id=conversation_id, turn_id=turn_id, heard_chars=heard_chars)
        )

    async def history(
        self, conversation_id: uuid.UUID, before_seq: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """A page of the branch shown, before ``before_seq``; its messages join the state."""
        query = History(conversation_id=conversation_id, before_seq=before_seq, limit=limit)
        page: HistoryPage = await self._request(query)
        return page

    async def input(
        self,
        conversation_id: uuid.UUID,
        input_id: str,
        text: str,
        *,
        final: bool = False,
        heard_chars: int | None = None,
    ) -> None:
        """Voice: a partial transcript, or the final one (which commits the turn)."""
        frame = Input(
            conversation_id=conversation_id,
            input_id=input_id,
            text=text,
            final=final,
            heard_chars=heard_chars,
        )
        await self._transmit(frame)

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        while not self._stopped:
            url = self._urls[self._url_index % len(self._urls)]
            self._set_status("connecting" if self._attempt == 0 else "reconnecting")
            code, reason = ABNORMAL, "connection failed"
            try:
                async with websockets.connect(
                    url, open_timeout=self._open_timeout_s, compression=None
                ) as ws:
                    self._ws = ws
                    await ws.send(encode(Hello(token=self._token, options=self._options)))
                    welcome = decode_server(await ws.recv())
                    if not isinstance(welcome, Welcome):
                        raise ChatClientError(getattr(welcome, "code", "refused"), str(welcome))
                    self._welcomed(welcome)
                    resume = asyncio.create_task(self._resume())
                    try:
                        async for raw in ws:
                            self._handle(decode_server(raw))
                    finally:
                        resume.cancel()
                    code, reason = ws.close_code or code, ws.close_reason or ""
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None:
                    code, reason = exc.rcvd.code, exc.rcvd.reason
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                pass
            finally:
                self._ws = None
                self._open.clear()
            if not self._stopped:
                await self._after_close(code, reason)

    def _welcomed(self, welcome: Welcome) -> None:
        self._attempt = 0
        self.state.user_id = welcome.user_id
        self.state.error = None
        self._set_status("open")

    async def _resume(self) -> None:
        """Rejoin every conversation from where it was (and those with turns waiting in
        the outbox), then resend the outbox with the same ids."""
        for frame in self.state.outbox:
            if frame.conversation_id not in self._joined:
                self._joined.append(frame.conversation_id)
        for conversation_id in list(self._joined):
            await self._request(self._join_frame(conversation_id))
        for frame in list(self.state.outbox):
            await self._transmit(frame)
        self._open.set()

    async def _after_close(self, code: int, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChatClientError(code, "connection closed"))
        self._pending.clear()
        if not should_reconnect(code):
            self.state.error = ChatClientError(code, reason or "closed by the server")
            for future in self._sends.values():
                if not future.done():
                    future.set_exception(self.state.error)
            self._sends.clear()
            self._stopped = True
            self._set_status("closed")
            return
        self._set_status("reconnecting")
        asked = re.search(r"retry_after_ms=(\d+)", reason)  # 4004, 4005
        if asked:
            self._retry_after_s = max(self._retry_after_s, int(asked.group(1)) / 1000)
        self._url_index += 1
        base, ceiling = self._backoff
        delay = max(self._retry_after_s, random.uniform(0, min(ceiling, base * 2**self._attempt)))
        self._attempt += 1
        self._retry_after_s = 0.0
        await asyncio.sleep(delay)

    def _join_frame(self, conversation_id: uuid.UUID) -> Join:
        c = self.state.conversations.get(conversation_id)
        if c is None:
            return Join(conversation_id=conversation_id)
        offsets = {t: len(r.text) for t, r in c.replies.items() if not r.done}
        return Join(conversation_id=conversation_id, after_seq=c.last_seq, offsets=offsets)

    async def _transmit(self, frame: ClientMessage) -> None:
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(encode(frame).decode())

    async def _request(self, frame: Any, attempts: int = 3) -> Any:
        """Send a request and wait for its answer; a request the connection dropped under
        (join, history: safe to repeat) is sent again once the client has resumed."""
        for attempt in range(attempts):
            request_id = uuid.uuid4().hex
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            await self._transmit(msgspec.structs.replace(frame, id=request_id))
            try:
                return await future
            except ChatClientError as exc:
                if exc.message != "connection closed" or attempt == attempts - 1 or self._stopped:
                    raise
            await self._open.wait()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ inbound

    def _handle(self, message: ServerMessage) -> None:
        kind = message.__struct_config__.tag
        for callback in list(self._listeners.get(str(kind), ())):
            callback(message)
        if isinstance(message, Joined):
            info = message.conversation
            joined = self.state.conversations.setdefault(info.id, ConversationState(info))
            joined.info = info
            if not message.recovered:
                joined.last_seq = max(joined.last_seq, message.last_seq)
        c = self.state.conversations.get(getattr(message, "conversation_id", None))  # type: ignore[arg-type]
        match message:
            case Ack():
                self.state.outbox = [f for f in self.state.outbox if f.id != message.id]
                self._save_outbox()
                acked = self._sends.pop(message.id, None)
                if acked is not None and not acked.done():
                    acked.set_result(message)
            case Message() if c is not None:
                c.messages[message.seq] = message.message
                c.last_seq = max(c.last_seq, message.seq)
                c.grow(message.seq, message.message.id)
                finished = c.replies.get(message.message.id)
                if finished is not None:  # the reply ended while this device was away
                    finished.text, finished.done = message.message.text, True
                    finished.finish_reason = message.message.finish_reason
            case TurnStart() if c is not None and message.turn_id not in c.replies:
                c.grow(message.seq, message.turn_id)
                c.replies[message.turn_id] = Reply(
                    message.turn_id,
                    message.seq,
                    message.assistant,
                    message.model,
                    message.route,
                    message.reply_to,
                    message.alternatives,
                )
            case Delta() if c is not None:
                reply = c.replies.get(message.turn_id)
                if reply is not None and not reply.done:
                    have, end = len(reply.text), message.offset + len(message.text)
                    if message.offset <= have < end:  # by offset: overlap trimmed
                        reply.text += message.text[have - message.offset :]
            case ToolCall() if c is not None and message.turn_id in c.replies:
                calls = c.replies[message.turn_id].tools
                if all(t.call_id != message.call_id for t in calls):
                    called = ToolCallInfo(
                        call_id=message.call_id,
                        name=message.name,
                        arguments=message.arguments,
                        offset=message.offset,
                    )
                    calls.append(called)
            case ToolResult() if c is not None and message.turn_id in c.replies:
                reply = c.replies[message.turn_id]
                n = next((n for n, t in enumerate(reply.tools) if t.call_id == message.call_id), -1)
                if n < 0:  # joined while the tool ran: its call went by; turn_end has it all
                    reply.tools.append(
                        ToolCallInfo(
                            call_id=message.call_id,
                            name=message.name,
                            arguments={},
                            offset=len(reply.text),
                        )
                    )
                    n = len(reply.tools) - 1
                reply.tools[n] = msgspec.structs.replace(
                    reply.tools[n], ok=message.ok, result=message.result, error=message.error
                )
            case TurnEnd() if c is not None:
                reply = c.replies.get(message.turn_id)
                if reply is not None:
                    reply.text, reply.done = message.message.text, True
                    reply.tools = list(message.message.tools) or reply.tools
                    reply.finish_reason, reply.usage = message.finish_reason, message.usage
                c.messages[message.seq] = message.message
                c.last_seq = max(c.last_seq, message.seq)
            case ConversationUpdated() if c is not None:
                # Renamed, or another branch shown (a switch): what the leaf needs that
                # this client lacks comes with a history page.
                info = message.conversation
                c.info = msgspec.structs.replace(info, last_seq=max(info.last_seq, c.info.last_seq))
                held = {m.id for m in c.messages.values()} | set(c.replies)
                if info.leaf_id is not None and info.leaf_id not in held:
                    asyncio.get_running_loop().create_task(self._refresh(info.id))
            case HistoryPage() if c is not None:
                for stored in message.messages:
                    if stored.status != "streaming":
                        c.messages[stored.seq] = stored
            case Presence() if c is not None:
                c.devices = message.devices
            case GoAway():
                # Reconnect now; the resume continues every stream exactly.
                self._retry_after_s = message.reconnect_after_ms / 1000
                self._attempt = 0
                if self._ws is not None:
                    asyncio.get_running_loop().create_task(
                        self._ws.close(CloseCode.SLOW_CONSUMER.value, "go_away")
                    )
            case Error():
                self._on_error(message)
        request_id = getattr(message, "id", None)
        if request_id is not None and not isinstance(message, Ack | Error):
            future = self._pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _refresh(self, conversation_id: uuid.UUID) -> None:
        with contextlib.suppress(ChatClientError):
            await self.history(conversation_id)

    def _on_error(self, error: Error) -> None:
        if error.retry_after_ms:
            self._retry_after_s = error.retry_after_ms / 1000
        if error.id is None:
            return
        failure = ChatClientError(error.code, error.message)
        sent = self._sends.get(error.id)
        if sent is not None and not error.retryable:
            self.state.outbox = [f for f in self.state.outbox if f.id != error.id]
            self._save_outbox()
            self._sends.pop(error.id)
            if not sent.done():
                sent.set_exception(failure)
        elif sent is not None:  # retryable: resend after the delay the server asked for
            frame = next((f for f in self.state.outbox if f.id == error.id), None)
            if frame is not None:
                delay = (error.retry_after_ms or 1000) / 1000
                asyncio.get_running_loop().call_later(
                    delay, lambda: asyncio.ensure_future(self._transmit(frame))
                )
        future = self._pending.pop(error.id, None)
        if future is not None and not future.done():
            future.set_exception(failure)

    def _set_status(self, status: str) -> None:
        if self.state.status != status:
            self.state.status = status
            for callback in list(self._listeners.get("status", ())):
                callback(status)

    def _save_outbox(self) -> None:
        if self._outbox_path is None:
            return
        if self.state.outbox:
            entries = [msgspec.to_builtins(f) for f in self.state.outbox]
            self._outbox_path.write_text(json.dumps(entries))
        else:
            self._outbox_path.unlink(missing_ok=True)
