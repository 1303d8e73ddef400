"""Daily token quotas: what a user spent today (UTC) against their quota, and when the
day resets. One reading for the turn that checks it and for ``GET /api/v1/usage``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from chat_server.storage import queries


@dataclass(frozen=True, slots=True)
class Today:
    input_tokens: int
    output_tokens: int
    quota: int | None  # tokens a day; None: no quota
    streaming: int = 0  # the owner's replies streaming now (CONCURRENT_REPLIES)

    @property
    def used(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def left(self) -> int | None:
        """Tokens the owner may still spend today (None: no quota)."""
        return None if self.quota is None else self.quota - self.used


async def today(s: AsyncSession, owner_id: uuid.UUID, setting: int) -> Today:
    """The owner's tokens of today and their quota: their override, else ``setting``
    (``DAILY_TOKEN_QUOTA``); 0 in either means no quota."""
    now = await queries.standing(s, owner_id)
    quota = setting if now.override is None else now.override
    return Today(now.input_tokens, now.output_tokens, quota or None, now.streaming)


def reset_ms(now: datetime | None = None) -> int:
    """Milliseconds until the next midnight UTC, when daily quotas start again."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds() * 1000))
