"""Regenerate, edit and branches: messages form a tree, a conversation shows one branch,
and the model sees only that branch. Real server, real WebSockets, real Postgres, the
real google-genai client against the simulator."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage.models import Message as MessageRow
from protocol.messages import (
    Ack,
    ConversationUpdated,
    Delta,
    Error,
    HistoryPage,
    Join,
    Joined,
    Message,
    MessageInfo,
    Regenerate,
    Send,
    ServerMessage,
    Switch,
    TurnEnd,
    TurnStart,
)
from tests.replicas import Replica
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user, reply_text

pytestmark = pytest.mark.asyncio
T = TypeVar("T")

SLOW = directive(tps=25, tokens=60)  # ~2.4 s of streaming


def said(request: dict[str, Any]) -> list[tuple[str, str]]:
    """What a model request carried: (role, text) per content, oldest first."""
    return [(c["role"], c["parts"][0]["text"]) for c in request["body"]["contents"]]


def shown(page: HistoryPage | list[MessageInfo]) -> list[tuple[str, int, int]]:
    messages = page.messages if isinstance(page, HistoryPage) else page
    return [(m.text, m.alternative, m.alternatives) for m in messages]


async def device(url: str, user: str, cid: uuid.UUID | None = None) -> Client:
    client = await Client.connect(url)
    await client.hello(user)
    if cid is not None:
        await client.send(Join(conversation_id=cid))
        await client.expect(Joined)
    return client


async def phone_and_laptop(url: str) -> tuple[str, Client, Client, uuid.UUID]:
    """A new user's two devices, both joined to a new conversation."""
    user = new_user()
    phone = await device(url, user)
    cid = await phone.create()
    return user, phone, await device(url, user, cid), cid


async def turn(client: Client, cid: uuid.UUID, text: str, **send: Any) -> tuple[Ack, TurnEnd]:
    await client.send(Send(id=uuid.uuid4().hex, conversation_id=cid, text=text, **send))
    ack, _ = await client.until(Ack)
    end, _ = await client.until(TurnEnd)
    return ack, end


async def until(client: Client, kind: type[T], check: Callable[[T], bool]) -> T:
    """Read until a ``kind`` frame that satisfies ``check`` (earlier frames are dropped)."""
    while True:
        frame, _ = await client.until(kind)
        if check(frame):
            return frame


async def history(client: Client, cid: uuid.UUID) -> HistoryPage:
    from protocol.messages import History

    await client.send(History(id="h", conversation_id=cid))
    page, _ = await client.until(HistoryPage)
    return page


async def stored(db: async_sessionmaker[AsyncSession], cid: uuid.UUID) -> list[MessageRow]:
    async with db() as s:
        rows = await s.scalars(
            select(MessageRow).where(MessageRow.conversation_id == cid).order_by(MessageRow.seq)
        )
        return list(rows)


async def test_regenerate_keeps_the_first_reply_as_an_alternative_on_every_device(
    server: RunningServer,
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    _user, phone, laptop, cid = await phone_and_laptop(server.ws)
    ack, first = await turn(phone, cid, "plan my day")
    await laptop.until(TurnEnd)

    await laptop.send(Regenerate(id="r1", conversation_id=cid, reply_to=ack.message_id))
    again = await laptop.expect(Ack)
    assert (again.id, again.seq, again.duplicate) == ("r1", 3, False)
    for watcher in (phone, laptop):
        start, before = await watcher.until(TurnStart)
        assert not any(isinstance(f, Message) for f in before), "the user turn is not new"
        assert (start.turn_id, start.reply_to, start.seq) == (again.message_id, ack.message_id, 3)
        assert start.alternatives == 2
        end, frames = await watcher.until(TurnEnd)
        assert reply_text(frames, start.turn_id) == end.message.text
        info = end.message
        assert (info.parent_id, info.alternative, info.alternatives) == (ack.message_id, 2, 2)

    # The model saw the branch up to the user turn, not the reply it replaces.
    requests = sim_requests()
    assert said(requests[-1]) == [("user", "plan my day")]
    page = await history(phone, cid)
    assert [m.id for m in page.messages] == [ack.message_id, again.message_id]
    assert shown(page)[0] == ("plan my day", 1, 1)
    assert shown(page)[1][1:] == (2, 2)

    # A resent regenerate (an outbox after a reconnect) makes no second reply.
    await laptop.send(Regenerate(id="r1", conversation_id=cid, reply_to=ack.message_id))
    resent = await laptop.expect(Ack)
    assert (resent.message_id, resent.seq, resent.duplicate) == (again.message_id, 3, True)
    rows = await stored(db, cid)
    assert [(r.seq, r.role, r.parent_id) for r in rows] == [
        (1, "user", None),
        (2, "assistant", ack.message_id),
        (3, "assistant", ack.message_id),
    ]
    assert rows[1].text == first.message.text, "the first reply stays as it was"
    assert len(sim_requests()) == len(requests), "one model call for the resent regenerate"

    # Only a user turn of this conversation can be regenerated.
    for reply_to in (again.message_id, uuid.uuid4()):
        await laptop.send(Regenerate(id=uuid.uuid4().hex, conversation_id=cid, reply_to=reply_to))
        error = await laptop.expect(Error)
        assert (error.code, error.retryable) == ("not_found", False)
    await phone.close()
    await laptop.close()


async def test_edit_branches_from_the_parent_and_the_model_sees_only_that_branch(
    server: RunningServer,
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    _user, phone, laptop, cid = await phone_and_laptop(server.ws)
    first, a1 = await turn(phone, cid, "book a table")
    second, _ = await turn(phone, cid, "for four people")

    edit = Send(id="e1", conversation_id=cid, text="for five people", edit_of=second.message_id)
    await phone.send(edit)
    ack = await phone.expect(Ack)
    for watcher in (phone, laptop):
        message = await until(watcher, Message, lambda m: m.message.id == ack.message_id)
        info = message.message
        assert (info.id, info.text, info.seq) == (ack.message_id, "for five people", 5)
        assert (info.parent_id, info.alternative, info.alternatives) == (a1.turn_id, 2, 2)
        start, _ = await watcher.until(TurnStart)
        assert (start.reply_to, start.alternatives) == (ack.message_id, 1)
        await watcher.until(TurnEnd)
    assert said(sim_requests()[-1]) == [
        ("user", "book a table"),
        ("model", a1.message.text),
        ("user", "for five people"),
    ]
    page = await history(laptop, cid)
    assert [m.text for m in page.messages][:3] == [
        "book a table",
        a1.message.text,
        "for five people",
    ]
    assert [(m.alternative, m.alternatives) for m in page.messages] == [
        (1, 1),
        (1, 1),
        (2, 2),
        (1, 1),
    ]

    # Editing the first turn starts a branch from the root: the model sees it alone.
    await phone.send(
        Send(id="e2", conversation_id=cid, text="book a car", edit_of=first.message_id)
    )
    root = (await phone.until(Message))[0].message
    assert (root.parent_id, root.alternative, root.alternatives) == (None, 2, 2)
    await phone.until(TurnEnd)
    assert said(sim_requests()[-1]) == [("user", "book a car")]
    assert [m.text for m in (await history(phone, cid)).messages][:1] == ["book a car"]

    # A resent edit is one turn; an edit of a reply, or of nothing, is refused.
    await phone.send(edit)
    assert (await phone.expect(Ack)).duplicate is True
    for target in (a1.turn_id, uuid.uuid4()):
        bad = Send(id=uuid.uuid4().hex, conversation_id=cid, text="x", edit_of=target)
        await phone.send(bad)
        error = await phone.expect(Error)
        assert (error.code, error.retryable) == ("not_found", False)
    await phone.close()
    await laptop.close()


async def test_switch_shows_another_branch_everywhere_and_the_next_turn_follows_it(
    server: RunningServer,
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    user, phone, laptop, cid = await phone_and_laptop(server.ws)
    ack, first = await turn(phone, cid, "name our product")
    await phone.send(Regenerate(id="r", conversation_id=cid, reply_to=ack.message_id))
    regenerated = await phone.expect(Ack)
    await phone.until(TurnEnd)

    # Back to the first reply: by its number among the alternatives.
    switch = Switch(id="s", conversation_id=cid, message_id=regenerated.message_id, alternative=1)
    await phone.send(switch)
    page, _ = await phone.until(HistoryPage)
    assert page.id == "s"
    assert [m.id for m in page.messages] == [ack.message_id, first.turn_id]
    assert shown(page)[1] == (first.message.text, 1, 2)
    updated, _ = await laptop.until(ConversationUpdated)
    assert updated.conversation.leaf_id == first.turn_id

    # The next turn continues the branch shown: the model sees the first reply.
    _, third = await turn(laptop, cid, "shorter please")
    assert said(sim_requests()[-1]) == [
        ("user", "name our product"),
        ("model", first.message.text),
        ("user", "shorter please"),
    ]

    # Switching to the other alternative shows its newest branch (here: its reply).
    await phone.send(Switch(conversation_id=cid, message_id=first.turn_id, alternative=2))
    page, _ = await phone.until(HistoryPage)
    assert [m.id for m in page.messages] == [ack.message_id, regenerated.message_id]
    # ... and back to the first: its newest descendant is the third turn's reply.
    await phone.send(Switch(conversation_id=cid, message_id=first.turn_id))
    page, _ = await phone.until(HistoryPage)
    assert page.messages[-1].id == third.turn_id

    # Over REST: the same branch, and a switch every device hears of.
    api = httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    )
    messages = (await api.get(f"/conversations/{cid}/messages")).json()["messages"]
    assert [m["id"] for m in messages][-1] == str(third.turn_id)
    assert messages[1]["alternatives"] == 2
    body = {"message_id": str(first.turn_id), "alternative": 2}
    out = await api.post(f"/conversations/{cid}/branch", json=body)
    assert out.status_code == 200, out.text
    assert out.json()["leaf_id"] == str(regenerated.message_id)
    updated, _ = await laptop.until(ConversationUpdated)
    assert updated.conversation.leaf_id == regenerated.message_id
    missing = await api.post(f"/conversations/{cid}/branch", json={"message_id": str(uuid.uuid4())})
    assert missing.status_code == 404
    beyond = await api.post(f"/conversations/{cid}/branch", json={**body, "alternative": 3})
    assert beyond.status_code == 404
    await api.aclose()

    # A device joining later learns the branch shown from joined.
    late = await Client.connect(server.ws)
    await late.hello(user)
    await late.send(Join(conversation_id=cid))
    joined = await late.expect(Joined)
    assert joined.conversation.leaf_id == regenerated.message_id
    await phone.send(Switch(id="x", conversation_id=cid, message_id=uuid.uuid4()))
    error, _ = await phone.until(Error)
    assert (error.id, error.code, error.retryable) == ("x", "not_found", False)
    for client in (phone, laptop, late):
        await client.close()


async def test_a_device_resumes_mid_regenerate_without_gap_and_its_resend_is_one_reply(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    user = new_user()
    phone = await device(server.ws, user)
    cid = await phone.create()
    ack, _ = await turn(phone, cid, f"write a long note {SLOW}")
    regenerate = Regenerate(id="again", conversation_id=cid, reply_to=ack.message_id)
    await phone.send(regenerate)
    again = await phone.expect(Ack)
    start, _ = await phone.until(TurnStart)
    frames: list[ServerMessage] = [start]
    while len(reply_text(frames, start.turn_id)) < 10:
        frames.append(await phone.expect(Delta))
    held = reply_text(frames, start.turn_id)
    await phone.close()  # the device drops mid-regenerate

    phone = await Client.connect(server.ws)
    await phone.hello(user)
    await phone.send(Join(conversation_id=cid, after_seq=2, offsets={start.turn_id: len(held)}))
    assert (await phone.expect(Joined)).recovered is True
    await phone.send(regenerate)  # its outbox resends what it has no ack for
    end, rest = await phone.until(TurnEnd)
    assert not any(isinstance(f, TurnStart) for f in rest), "it had the turn_start"
    assert any(
        isinstance(f, Ack) and f.duplicate and f.message_id == again.message_id for f in rest
    )
    after = [f for f in rest if isinstance(f, Delta)]
    assert after[0].offset == len(held), "no gap and no duplicate"
    assert held + "".join(d.text for d in after) == end.message.text
    assert len(await stored(db, cid)) == 3
    await phone.close()


async def test_regenerate_edit_and_switch_work_across_replicas(
    replicas: Callable[..., list[Replica]],
    db: async_sessionmaker[AsyncSession],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    a, b = replicas(2)
    user = new_user()
    on_a = await device(a.ws, user)
    cid = await on_a.create()
    on_b = await device(b.ws, user, cid)
    ack, first = await turn(on_a, cid, f"draft the memo {SLOW}")
    calls = len(sim_requests())

    # The same regenerate on both replicas at once is one reply and one model call.
    regenerate = Regenerate(id="both", conversation_id=cid, reply_to=ack.message_id)
    await on_a.send(regenerate)
    await on_b.send(regenerate)
    acks = [(await c.until(Ack))[0] for c in (on_a, on_b)]
    assert acks[0].message_id == acks[1].message_id
    assert sorted(x.duplicate for x in acks) == [False, True]
    turn_id = acks[0].message_id

    # A's device drops mid-regenerate and comes back on B: the rest, no gap.
    start = await until(on_a, TurnStart, lambda t: t.turn_id == turn_id)
    frames: list[ServerMessage] = [start]
    while len(reply_text(frames, turn_id)) < 10:
        frames.append(await on_a.expect(Delta))
    held = reply_text(frames, turn_id)
    await on_a.close()
    moved = await Client.connect(b.ws)
    await moved.hello(user)
    await moved.send(Join(conversation_id=cid, after_seq=2, offsets={turn_id: len(held)}))
    await moved.expect(Joined)
    end, rest = await moved.until(TurnEnd)
    after = [d for d in rest if isinstance(d, Delta)]
    assert after[0].offset == len(held)
    assert held + "".join(d.text for d in after) == end.message.text
    assert (end.message.alternative, end.message.alternatives) == (2, 2)
    watched = await until(on_b, TurnEnd, lambda e: e.turn_id == turn_id)
    assert watched.message.text == end.message.text
    assert len(sim_requests()) == calls + 1

    # An edit and a switch on B reach the device on A.
    on_a = await device(a.ws, user, cid)
    await on_b.send(
        Send(id="e", conversation_id=cid, text="draft it shorter", edit_of=ack.message_id)
    )
    edited = await until(on_a, Message, lambda m: m.message.text == "draft it shorter")
    assert (edited.message.parent_id, edited.message.alternatives) == (None, 2)
    await until(on_a, TurnEnd, lambda e: e.message.reply_to == edited.message.id)
    await on_b.send(Switch(conversation_id=cid, message_id=first.turn_id))
    updated = await until(on_a, ConversationUpdated, lambda u: True)
    assert updated.conversation.leaf_id == first.turn_id
    page = await history(on_a, cid)
    assert [m.id for m in page.messages] == [ack.message_id, first.turn_id]
    assert len(await stored(db, cid)) == 5
    for client in (on_a, on_b, moved):
        await client.close()


async def test_the_model_sees_every_turn_when_replicas_take_turns_about(
    replicas: Callable[..., list[Replica]],
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    """A replica keeps the window of the reply it finished last, so its next turn reads
    nothing. A turn in between on another replica, or a switch, must not be missed."""
    a, b = replicas(2)
    user = new_user()
    on_a = await device(a.ws, user)
    cid = await on_a.create()
    on_b = await device(b.ws, user, cid)
    _, one = await turn(on_a, cid, "one")
    _, two = await turn(on_a, cid, "two")  # A's window after "one"
    assert said(sim_requests()[-1]) == [
        ("user", "one"),
        ("model", one.message.text),
        ("user", "two"),
    ]
    _, three = await turn(on_b, cid, "three")  # B reads the branch
    four, _ = await turn(on_a, cid, "four")  # A's window ends at "two": it must read "three"
    assert said(sim_requests()[-1]) == [
        ("user", "one"),
        ("model", one.message.text),
        ("user", "two"),
        ("model", two.message.text),
        ("user", "three"),
        ("model", three.message.text),
        ("user", "four"),
    ]
    # An edit of "four" on A branches above A's window: the model must not see "four".
    await turn(on_a, cid, "four, shorter", edit_of=four.message_id)
    assert said(sim_requests()[-1])[-3:] == [
        ("user", "three"),
        ("model", three.message.text),
        ("user", "four, shorter"),
    ]
    for client in (on_a, on_b):
        await client.close()
