"""Routing quality against a running server, through its REST API only: build the
team of tests/data/team.json for a fresh user, dry-run every labelled turn of
tests/data/routing.jsonl through ``POST /api/v1/route``, and score the answers.

``expected: null`` marks a turn no specialist should take: the router must abstain
(answer with the conversation's default assistant).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


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

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def abstain_precision(self) -> float:
        return self.abstained_right / self.abstained if self.abstained else 1.0

    @property
    def abstain_recall(self) -> float:
        return self.abstained_right / self.should_abstain if self.should_abstain else 1.0


def build_team(base: str, token: str, team: dict[str, Any] | None = None) -> dict[str, str]:
    """Create the team for ``token``'s user; return assistant name → id."""
    team = team or json.loads((DATA / "team.json").read_text())
    ids = {a["name"]: a["id"] for a in _call(base, token, "GET", "/assistants")}
    for assistant in team["assistants"]:
        spec = {k: assistant[k] for k in ("name", "description", "system_prompt")}
        created = _call(base, token, "POST", "/assistants", spec)
        ids[created["name"]] = created["id"]
        for skill in assistant["skills"]:
            _call(base, token, "POST", f"/assistants/{created['id']}/skills", skill)
    return ids


def evaluate(base: str, token: str | None = None) -> Score:
    """Build the team for a fresh user and score every labelled turn."""
    token = token or f"routing-eval-{uuid.uuid4().hex[:8]}"
    build_team(base, token)
    conversation = _call(base, token, "POST", "/conversations", {"title": "routing eval"})
    rows = [json.loads(line) for line in (DATA / "routing.jsonl").read_text().splitlines()]
    score = Score()
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
        score.total += 1
        score.by_language[row["lang"]] += 1
        score.should_abstain += expected is None
        score.abstained += abstained
        score.abstained_right += abstained and expected is None
        if got == expected:
            score.correct += 1
            score.correct_by_language[row["lang"]] += 1
        else:
            score.misses.append((row["text"], expected, got))
    return score
