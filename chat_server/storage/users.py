"""Subject → user id, remembered.

Every connection (``hello``) and every REST request turns an authenticated subject into
a user id. Users are never deleted and their ids never change, so a subject seen once
is answered from memory: a reconnecting device costs no Postgres transaction. The
memory is bounded (least recently used out). An ``OrderedDict`` is all the LRU needs;
a cache library would add a dependency for six lines.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage import queries

REMEMBERED = 100_000  # subjects; about 200 bytes each


class UserIds:
    def __init__(
        self, db: async_sessionmaker[AsyncSession], *, default_model: str, size: int = REMEMBERED
    ) -> None:
        self._db = db
        self._default_model = default_model
        self._size = size
        self._ids: OrderedDict[str, uuid.UUID] = OrderedDict()

    async def resolve(self, subject: str) -> uuid.UUID:
        """The subject's user id; a subject never seen gets a user (and its assistant)."""
        user_id = self._ids.get(subject)
        if user_id is not None:
            self._ids.move_to_end(subject)
            return user_id
        async with self._db.begin() as s:
            user = await queries.ensure_user(s, subject, default_model=self._default_model)
        self._ids[subject] = user.id
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return user.id
