"""Routing quality against a running server, through its REST API: build a team for a
fresh user, dry-run labelled turns through ``POST /api/v1/route``, and score the answers.

Two teams, each with its own labelled turns in English and Japanese:
- ``office``: tests/data/team.json + routing.jsonl (210 turns). The offline embedders
  were tuned on part of it: a fixed half (``TUNE``, by a hash of the text) was used to
  choose the embedder and the abstain rule; only the other half (``TEST``) is a result.
- ``shop``: tests/data/team_shop.json + routing_shop.jsonl (120 turns), written before
  any router change and never tuned on: a second domain with more overlapping skills.

``expected: null`` marks a turn no specialist should take: the router must abstain
(answer with the conversation's default assistant).

``feedback_experiment`` teaches every misrouted turn of a set (stored as a real turn
over WebSocket, then ``POST /feedback``) and re-scores the whole set: how many turns
the teaching fixed, and how many it broke.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TEAMS = {"office": ("team.json", "routing.jsonl"), "shop": ("team_shop.json", "routing_shop.jsonl")}
ALL, TUNE, TEST = "all", "tune", "test"


def labelled(team: str = "office", part: str = ALL) -> list[dict[str, Any]]:
    """A team's labelled turns; ``part`` TUNE or TEST splits them in two fixed halves."""
    rows = [json.loads(line) for line in (DATA / TEAMS[team][1]).read_text().splitlines()]
    if part == ALL:
        return rows
    return [r for r in rows if (zlib.crc32(r["text"].encode()) % 2 == 0) == (part == TUNE)]


def _call(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


@dataclass
class Score:
    total: int = 0
    correct: int = 0
    abstained: int = 0  # routed to the default assistant
    abstained_right: int = 0  # ... and the turn was labelled "abstain"
    should_abstain: int = 0
    by_language: Counter[str] = field(default_factory=Counter)
    correct_by_language: Counter[str] = field(default_factory=Counter)
    misses: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    right: set[str] = field(default_factory=set)  # texts routed as labelled

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def abstain_precision(self) -> float:
        return self.abstained_right / self.abstained if self.abstained else 1.0

    @property
    def abstain_recall(self) -> float:
        return self.abstained_right / self.should_abstain if self.should_abstain else 1.0


def build_team(base: str, token: str, team: str = "office") -> dict[str, str]:
    """Create the team for ``token``'s user; return assistant name → id."""
    spec_of = json.loads((DATA / TEAMS[team][0]).read_text())
    ids = {a["name"]: a["id"] for a in _call(base, token, "GET", "/assistants")}
    for assistant in spec_of["assistants"]:
        spec = {k: assistant[k] for k in ("name", "description", "system_prompt")}
        created = _call(base, token, "POST", "/assistants", spec)
        ids[created["name"]] = created["id"]
        for skill in assistant["skills"]:
            _call(base, token, "POST", f"/assistants/{created['id']}/skills", skill)
    return ids


def evaluate(
    base: str, token: str | None = None, *, team: str = "office", part: str = ALL
) -> Score:
    """Build the team for a fresh user (or use ``token``'s) and score the labelled turns."""
    if token is None:
        token = f"routing-eval-{uuid.uuid4().hex[:8]}"
        build_team(base, token, team)
    return score(base, token, labelled(team, part))


def score(base: str, token: str, rows: list[dict[str, Any]]) -> Score:
    conversation = _call(base, token, "POST", "/conversations", {"title": "routing eval"})
    result = Score()
    for row in rows:
        decision = _call(
            base,
            token,
            "POST",
            "/route",
            {"text": row["text"], "conversation_id": conversation["id"]},
        )
        abstained = decision["reason"] in ("default", "fallback")
        got = None if abstained else decision["assistant"]["name"]
        expected = row["expected"]
        result.total += 1
        result.by_language[row["lang"]] += 1
        result.should_abstain += expected is None
        result.abstained += abstained
        result.abstained_right += abstained and expected is None
        if got == expected:
            result.correct += 1
            result.correct_by_language[row["lang"]] += 1
            result.right.add(row["text"])
        else:
            result.misses.append((row["text"], expected, got))
    return result


@dataclass
class Taught:
    taught: int
    fixed_taught: int  # taught turns now right (they match their own example)
    fixed_other: int  # other turns that were wrong before and are right after
    broken: int  # right before, wrong after
    before: Score
    after: Score


async def _store_turns(ws_url: str, token: str, texts: list[str]) -> list[str]:
    """Each text as a real user turn (the feedback API learns from stored turns)."""
    from load.client import join, open_session
    from protocol.messages import Ack, ConversationCreate, Join, Send

    client = await open_session(ws_url, token)
    try:
        joined = await join(client, Join(create=ConversationCreate(title="feedback")))
        ids = []
        for n, text in enumerate(texts):
            await client.send(Send(id=f"t{n}", conversation_id=joined.conversation.id, text=text))
            while not isinstance(message := await client.recv(30), Ack):
                pass  # the previous turn's reply streaming
            ids.append(str(message.message_id))
        return ids
    finally:
        await client.close()


def feedback_experiment(base: str, ws_url: str, team: str = "office") -> Taught:
    """Teach every misrouted specialist turn of the team's set, then re-score the set."""
    import asyncio

    token = f"routing-feedback-{uuid.uuid4().hex[:8]}"
    ids = build_team(base, token, team)
    rows = labelled(team)
    before = score(base, token, rows)
    wrong = [(text, expected) for text, expected, _ in before.misses if expected is not None]
    message_ids = asyncio.run(_store_turns(ws_url, token, [text for text, _ in wrong]))
    for message_id, (_, expected) in zip(message_ids, wrong, strict=True):
        body = {"message_id": message_id, "assistant_id": ids[expected]}
        _call(base, token, "POST", "/feedback", body)
    after = score(base, token, rows)
    taught = {text for text, _ in wrong}
    fixed = after.right - before.right
    broken = len(before.right - after.right)
    return Taught(len(wrong), len(fixed & taught), len(fixed - taught), broken, before, after)
