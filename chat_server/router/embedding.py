"""Embedders: text → unit vectors for skill matching. The ``Embedder`` protocol and the
offline one; the Gemini one lives in ``llm/gemini.py`` (the only google.genai importer).

Every stored vector records the embedder ``name`` that made it: vectors of different
embedders are never compared, and a server started with another embedder re-embeds.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

DIM = 1024  # the width of the vector columns (migration 0002)


class Embedder(Protocol):
    """Contract: ``embed`` returns one L2-normalised vector of ``DIM`` floats per text,
    in order; the same text gives the same vector for the same ``name``.
    ``default_threshold`` is the similarity a new skill needs by default: scores of
    different embedders live on different scales. ``min_confidence`` is the calibrated
    confidence (``router.abstain``) a skill match needs: 0 for an embedder that cannot
    tell small talk from work (hashing), where thresholds alone decide."""

    name: str
    default_threshold: float
    min_confidence: float

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]+")
_HIRAGANA_ONLY = re.compile(r"^[\u3040-\u309f]+$")
_PHRASES = re.compile(r"(?<=[。！？；;])|(?<=[.!?])\s+")
_STOP = frozenset(
    "a an the to of for and or in on at by with from my me i you your it is are be can "
    "could would please this that these those do does what how".split()
)


def _features(text: str) -> Counter[str]:
    """Word unigrams and in-word trigrams for Latin text (robust to inflection);
    character unigrams and bigrams for Japanese/Chinese runs (no tokenizer needed),
    leaving out those made only of hiragana (particles and endings: を, して)."""
    text = unicodedata.normalize("NFKC", text).lower()
    features: Counter[str] = Counter()
    for word in _WORD.findall(text):
        if word in _STOP:
            continue
        features["w:" + word] += 2
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            features["t:" + padded[i : i + 3]] += 1
    for run in _CJK.findall(text):
        for n in (1, 2):
            for i in range(len(run) - n + 1):
                gram = run[i : i + n]
                if not _HIRAGANA_ONLY.match(gram):
                    features[f"c{n}:" + gram] += 1
    return features


def phrases(description: str) -> list[str]:
    """A skill description's sentences and clauses (split at 。！？; and sentence ends),
    each matched on its own, so one short turn is not diluted by the whole text."""
    parts = [p.strip(" 　,、") for p in _PHRASES.split(description)]
    return [p for p in parts if len(p) >= 2]


def hash_embed(text: str, dim: int = DIM) -> list[float]:
    """Signed feature hashing with sublinear term weights, L2-normalised."""
    vector = [0.0] * dim
    for feature, count in _features(text).items():
        h = zlib.crc32(feature.encode())
        vector[h % dim] += (1.0 if h & 0x80000000 else -1.0) * (1.0 + math.log(count))
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


class HashingEmbedder:
    """Offline: character n-gram hashing. No network, no model download, works for
    Japanese without a tokenizer."""

    name = "hashing-ngram-v2"
    default_threshold = 0.1
    min_confidence = 0.0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [hash_embed(t) for t in texts]

    async def aclose(self) -> None:
        return None
