"""Step 1 of routing: what a turn is. Language, kind of task, complexity. No I/O."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

_KANA = re.compile(r"[\u3040-\u30ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_LATIN = re.compile(r"[A-Za-z]")
_WORDS = re.compile(r"[A-Za-z0-9']+")
_WIDE = re.compile(r"[^\x00-\u2fff]")  # CJK and the like: about a token each

# Kinds of task, by cue words in English and Japanese (lower-cased, NFKC).
_KINDS: dict[str, tuple[str, ...]] = {
    "schedule": (
        "schedule",
        "reschedule",
        "meeting",
        "calendar",
        "appointment",
        "book a",
        "remind",
        "予定",
        "会議",
        "打ち合わせ",
        "スケジュール",
        "予約",
        "リマインド",
        "空いて",
    ),
    "research": (
        "research",
        "find out",
        "compare",
        "look up",
        "what is",
        "sources",
        "summarize the",
        "調べ",
        "比較",
        "調査",
        "とは",
        "情報を",
    ),
    "write": (
        "write",
        "draft",
        "email",
        "letter",
        "essay",
        "blog",
        "proofread",
        "rewrite",
        "書いて",
        "文章",
        "メール",
        "下書き",
        "作成",
        "添削",
    ),
    "translate": ("translate", "translation", "in japanese", "in english", "翻訳", "英訳", "和訳"),
    "code": (
        "code",
        "bug",
        "function",
        "python",
        "sql",
        "error",
        "stack trace",
        "script",
        "コード",
        "バグ",
        "関数",
        "エラー",
        "プログラム",
    ),
    "finance": (
        "expense",
        "invoice",
        "budget",
        "receipt",
        "reimburse",
        "tax",
        "accounting",
        "経費",
        "請求書",
        "予算",
        "領収書",
        "精算",
        "税",
    ),
}
_HARD = (
    "step by step",
    "in detail",
    "detailed",
    "analyze",
    "analyse",
    "compare",
    "trade-off",
    "plan",
    "strategy",
    "multiple",
    "comprehensive",
    "pros and cons",
    "詳しく",
    "詳細",
    "分析",
    "比較",
    "計画",
    "戦略",
    "複数",
    "段階的",
)


@dataclass(frozen=True, slots=True)
class Analysis:
    language: str  # ja | en | zh | ko | other
    kind: str  # one of _KINDS, or "chat"
    complexity: str  # low | medium | high
    tokens: int  # estimated prompt tokens of the turn


def estimate_tokens(text: str) -> int:
    """Rough model tokens: ~1.3 per English word, ~1 per CJK character."""
    # A turn's history is mostly the last turn's messages (the model window keeps the
    # same strings): counting their words again was ~5 % of the event loop. Only short
    # texts are remembered, so the cache stays a few MB whatever people send.
    return _estimate(text) if len(text) <= _CACHED_CHARS else _count(text)


_CACHED_CHARS = 4000


def _count(text: str) -> int:
    words = len(_WORDS.findall(text))
    wide = len(_WIDE.findall(text))
    return max(1, round(words * 1.3 + wide))


_estimate = functools.lru_cache(maxsize=2048)(_count)


def language(text: str) -> str:
    kana, han = len(_KANA.findall(text)), len(_HAN.findall(text))
    if kana or (han and not _HANGUL.search(text) and han >= len(_LATIN.findall(text))):
        return "ja" if kana else "zh"
    if _HANGUL.search(text):
        return "ko"
    return "en" if _LATIN.search(text) else "other"


def analyse(text: str) -> Analysis:
    folded = unicodedata.normalize("NFKC", text).lower()
    scores = {kind: sum(cue in folded for cue in cues) for kind, cues in _KINDS.items()}
    kind = max(scores, key=lambda k: scores[k])
    tokens = estimate_tokens(text)
    hard = sum(cue in folded for cue in _HARD)
    if tokens > 150 or hard >= 2 or (hard and tokens > 40):
        complexity = "high"
    elif tokens > 40 or hard:
        complexity = "medium"
    else:
        complexity = "low"
    return Analysis(language(text), kind if scores[kind] else "chat", complexity, tokens)
