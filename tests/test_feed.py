"""feed.py, pure: exactly-once delivery by seq and offset, fed events directly, with the
gaps, duplicates, overlaps and reorders a bus and a repair can produce."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat_server.feed import ConversationFeed, FeedState, Replies
from chat_server.hub import Event
from protocol.messages import (
    AssistantRef,
    Delta,
    Message,
    MessageInfo,
    MessageStatus,
    Role,
    RouteInfo,
    TurnEnd,
    TurnStart,
)

CONV, TURN = uuid.uuid4(), uuid.uuid4()


def live_feed(replies: Replies | None = None) -> ConversationFeed:
    feed = ConversationFeed(CONV, replies or Replies(), buffer_limit=8)
    feed.go_live()
    return feed


def info(seq: int, role: Role = Role.USER, message_id: uuid.UUID | None = None) -> MessageInfo:
    return MessageInfo(
        id=message_id or uuid.uuid4(),
        seq=seq,
        role=role,
        text="t",
        status=MessageStatus.COMPLETE,
        created_at="2026-01-01T00:00:00+00:00",
    )


def message(seq: int) -> Event:
    return Event.of(Message(conversation_id=CONV, seq=seq, message=info(seq)))


def start(seq: int = 2) -> Event:
    return Event.of(
        TurnStart(
            conversation_id=CONV,
            seq=seq,
            turn_id=TURN,
            reply_to=uuid.uuid4(),
            assistant=AssistantRef(id=uuid.uuid4(), name="a"),
            model="m",
            route=RouteInfo(reason="default"),
        )
    )


def delta(offset: int, text: str) -> Event:
    return Event.of(Delta(conversation_id=CONV, turn_id=TURN, offset=offset, text=text))


def end(seq: int = 2) -> Event:
    reply = info(seq, Role.ASSISTANT, TURN)
    return Event.of(
        TurnEnd(conversation_id=CONV, seq=seq, turn_id=TURN, message=reply, finish_reason="stop")
    )


def sent(feed: ConversationFeed, events: list[Event]) -> list[Event]:
    return [out for event in events for out in feed.accept(event).events]


def test_a_stored_message_goes_out_once_and_never_below_the_floor() -> None:
    feed = live_feed()
    feed.floor = 3
    out = sent(feed, [message(2), message(4), message(4), message(6), message(5), message(6)])
    assert [e.seq for e in out] == [4, 6, 5]
    assert feed.floor == 6


def test_deltas_are_trimmed_to_what_is_new_and_a_gap_asks_for_repair() -> None:
    feed = live_feed()
    assert feed.accept(delta(0, "early")).repair == TURN, "no turn_start yet: repair"
    out = sent(feed, [start(), delta(0, "Hel"), delta(0, "Hel"), delta(1, "ello"), delta(5, "!")])
    deltas = [(e.offset, e.text) for e in out if e.kind == "delta"]
    assert deltas == [(0, "Hel"), (3, "lo"), (5, "!")]
    gap = feed.accept(delta(9, "ahead"))
    assert (gap.events, gap.repair) == ((), TURN)


def test_after_turn_end_nothing_of_the_turn_goes_out_again() -> None:
    feed = live_feed()
    out = sent(feed, [start(), delta(0, "ab"), end(), delta(2, "c"), start(), end(), message(2)])
    assert [e.kind for e in out] == ["turn_start", "delta", "turn_end"]


def test_a_client_resuming_with_offsets_gets_only_the_rest() -> None:
    replies = Replies(offsets={TURN: 4})  # join.offsets: the client holds 4 characters
    feed = live_feed(replies)
    out = sent(feed, [start(), delta(0, "Hello world")])
    assert [(e.kind, e.offset, e.text) for e in out] == [("delta", 4, "o world")]


def test_live_events_wait_during_the_replay_within_a_bound() -> None:
    feed = ConversationFeed(CONV, Replies(), buffer_limit=2)
    assert feed.state is FeedState.REPLAYING
    assert feed.hold(message(1))
    assert feed.hold(message(2))
    assert not feed.hold(message(3)), "full: the session closes the client as slow"
    assert [e.seq for e in feed.go_live()] == [1, 2]
    assert feed.state is FeedState.LIVE
    with pytest.raises(RuntimeError, match="expected REPLAYING, got LIVE"):
        feed.hold(message(4))


@given(
    text=st.text(min_size=1, max_size=40),
    windows=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=30),
)
def test_any_order_of_overlapping_deltas_sends_each_character_once_in_order(
    text: str, windows: list[tuple[int, int]]
) -> None:
    feed = live_feed()
    feed.accept(start())
    shown = ""
    for a, b in [*windows, (0, len(text))]:  # the last one is a repair's full text
        lo, hi = sorted((min(a, len(text)), min(b, len(text))))
        if lo == hi:
            continue
        accepted = feed.accept(delta(lo, text[lo:hi]))
        assert accepted.repair is (TURN if lo > len(shown) else None)
        for out in accepted.events:
            assert out.offset == len(shown), "no gap, no repeat"
            shown += out.text
    assert shown == text


@given(seqs=st.lists(st.integers(1, 30), max_size=60), floor=st.integers(0, 10))
def test_any_order_of_duplicated_messages_sends_each_seq_above_the_floor_once(
    seqs: list[int], floor: int
) -> None:
    feed = live_feed()
    feed.floor = floor
    out = [e.seq for e in sent(feed, [message(s) for s in seqs])]
    assert len(out) == len(set(out))
    assert set(out) == {s for s in seqs if s > floor}
