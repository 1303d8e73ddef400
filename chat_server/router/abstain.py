"""When no specialist fits: a calibrated confidence instead of a raw cosine threshold.

Scores of different embedders live on different scales (hashing puts unrelated text
near 0.05, USE near 0.25, Gemini higher still), so a global cut-off means nothing. The
router compares a turn with two things measured in the same embedder:

- ``NOBODY``: built-in examples of turns that belong to no specialist (greetings,
  thanks, small talk, off-topic), in English and Japanese. A turn's margin is its best
  specialist score minus its best ``NOBODY`` score.
- The team's own calibration: how far each ``NOBODY`` example's margin goes against
  *this team's* skills (leave one out). ``confidence`` is the share of those small-talk
  margins the turn's margin beats: 0.9 means the turn looks more like a specialist's
  work than 90% of small talk does against this team. It is a rank, so it means the same
  for every embedder.

A learned example (feedback) must also be specific: it wins a turn only when the turn
is closer to it than any two texts of *different* assistants of the team are to each
other, and than all but 1% of pairs of different small-talk examples are (how close two
short, unrelated chat turns come in this embedder: turns resemble each other in form
more than skill descriptions do). That is ``example_bar``: a taught turn wins its
paraphrases, not every turn phrased like it.

The calibration of a team is cached for ``CALIBRATION_TTL_S`` and dropped at once when
this replica changes the team; another replica's change is seen within the TTL.
"""

from __future__ import annotations

import bisect
import time
import uuid
from dataclasses import dataclass

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.router.embedding import Embedder
from chat_server.storage import teams

CALIBRATION_TTL_S = 30.0

# Generic patterns, written for this list (none is copied from the labelled sets).
NOBODY = [
    "hello", "hi there", "hey, how's it going", "good evening", "nice to meet you",
    "thank you so much", "thanks a lot", "much appreciated", "you're the best",
    "bye for now", "see you later", "good night", "talk to you tomorrow",
    "ok", "sure", "got it", "sounds good", "no problem", "yes please", "no thanks",
    "how are you", "what's up", "who are you?", "are you a robot?",
    "what do you think about life?", "I'm bored", "I feel happy today", "what a day",
    "it's really hot outside", "is it going to rain?", "what's your favourite food?",
    "do you have any hobbies?", "what movie should I watch tonight?",
    "tell me something fun", "say something funny", "what time is it?",
    "sorry, wrong chat", "just testing", "never mind", "lol",
    "こんにちは", "こんばんは", "はじめまして", "やあ、元気？", "ありがとうございます",
    "どうもありがとう", "感謝しています", "助かった！", "またね", "おやすみなさい",
    "それではまた明日", "はい", "わかりました", "オッケー", "大丈夫です", "いいえ、結構です",
    "お元気ですか", "あなたは誰？", "ロボットなの？", "人生ってなんだと思う？", "暇だなあ",
    "今日は気分がいい", "外はすごく暑いね", "雨は降りそう？", "好きな食べ物は何？",
    "趣味はある？", "今夜どんな映画を見ようかな", "何か楽しい話して", "冗談を言って",
    "今何時？", "ごめん、間違えた", "テストです", "なんでもない", "笑",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Calibration:
    """One team's calibration in one embedder."""

    margins: list[float]  # the NOBODY examples' margins against the team, sorted
    example_bar: float  # the closest two texts of different assistants are

    def confidence(self, margin: float) -> float:
        if not self.margins:
            return 1.0 if margin > 0 else 0.0
        return round(bisect.bisect_left(self.margins, margin) / len(self.margins), 4)


def calibrate(nobody: np.ndarray, vectors: np.ndarray, assistants: list[uuid.UUID]) -> Calibration:
    """Pure: ``nobody`` (n x d) and the team's description vectors (m x d, by assistant)."""
    if not len(vectors):
        return Calibration([], 1.0)
    team = nobody @ vectors.T  # each small-talk example against every team vector
    best = team.max(axis=1)
    own = nobody @ nobody.T
    np.fill_diagonal(own, -np.inf)  # leave one out: its nearest *other* example
    margins = sorted((best - own.max(axis=1)).tolist())
    chat = float(np.quantile(own[np.triu_indices(len(own), 1)], 0.99)) if len(own) > 1 else 0.0
    ids = np.array([a.int for a in assistants], dtype=object)
    different = ids[:, None] != ids[None, :]
    cross = (vectors @ vectors.T)[different]
    return Calibration(margins, max(float(cross.max()) if cross.size else 0.0, chat))


class Matcher:
    """The embedder, its ``NOBODY`` vectors, and the teams' calibrations."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._nobody: np.ndarray | None = None
        self._teams: dict[uuid.UUID, tuple[float, Calibration]] = {}

    async def _nobody_vectors(self) -> np.ndarray:
        if self._nobody is None:
            self._nobody = np.asarray(await self.embedder.embed(NOBODY), dtype=np.float32)
        return self._nobody

    async def warm(self) -> None:
        """Embed ``NOBODY`` now (and so load the embedder's model), not on a turn."""
        await self._nobody_vectors()

    async def nobody_score(self, vector: list[float]) -> float:
        """How close a turn is to the nearest ``NOBODY`` example."""
        nobody = await self._nobody_vectors()
        return float((nobody @ np.asarray(vector, dtype=np.float32)).max())

    async def calibration(self, s: AsyncSession, owner_id: uuid.UUID) -> Calibration:
        cached = self._teams.get(owner_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CALIBRATION_TTL_S:
            return cached[1]
        rows = await teams.team_vectors(s, owner_id, embedder=self.embedder.name)
        vectors = np.asarray([v for _, v in rows], dtype=np.float32).reshape(len(rows), -1)
        calibration = calibrate(await self._nobody_vectors(), vectors, [a for a, _ in rows])
        if len(self._teams) > 10_000:  # bounded: forget the oldest
            self._teams.pop(next(iter(self._teams)))
        self._teams[owner_id] = (now, calibration)
        return calibration

    def invalidate(self, owner_id: uuid.UUID) -> None:
        """The team changed on this replica: recalibrate on its next turn."""
        self._teams.pop(owner_id, None)
