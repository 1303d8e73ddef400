"""Daily token quotas: counted from the model's usage into Postgres with each reply's
final write; a reply that crosses the quota ends with finish_reason quota (its text
kept); a spent quota refuses the next turn before it starts; GET /usage adds up; the
``quota`` command overrides it for one user."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage.models import Conversation, User
from chat_server.storage.models import Message as MessageRow
from protocol.messages import Ack, Error, Send, TurnEnd
from tests.replicas import Replica
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user

pytestmark = pytest.mark.asyncio


async def spent(db: async_sessionmaker[AsyncSession], subject: str) -> int:
    """The tokens the user's stored replies report, summed."""
    async with db() as s:
        rows = await s.scalars(
            select(MessageRow)
            .join(Conversation, Conversation.id == MessageRow.conversation_id)
            .join(User, User.id == Conversation.owner_id)
            .where(User.external_id == subject, MessageRow.role == "assistant")
        )
        usages = [(r.meta or {}).get("usage", {}) for r in rows]
    return sum(u.get("input_tokens", 0) + u.get("output_tokens", 0) for u in usages)


async def quota_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "chat_server", "quota", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def test_a_quota_ends_a_reply_mid_stream_then_refuses_the_next_turn(
    start_server: Callable[..., RunningServer],
    db: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    running = start_server(daily_token_quota=60)
    user = new_user()
    client = await Client.connect(running.ws)
    await client.hello(user)
    cid = await client.create()
    await client.send(Send(id="t1", conversation_id=cid, text="go " + directive(tokens=300)))
    await client.expect(Ack)
    end, _ = await client.until(TurnEnd)
    assert end.finish_reason == "quota"
    assert end.error is not None
    assert end.error.code == "quota_exceeded"
    assert end.error.retry_after_ms
    assert 0 < len(end.message.text.split()) < 300, "the text so far is kept"
    assert end.message.status == "interrupted"

    await client.send(Send(id="t2", conversation_id=cid, text="more please"))
    refused = await client.expect(Error)
    assert (refused.id, refused.code, refused.retryable) == ("t2", "quota_exceeded", False)
    assert refused.retry_after_ms is not None
    assert 0 < refused.retry_after_ms <= 86_400_000
    assert "00:00 UTC" in refused.message

    async with httpx.AsyncClient(
        base_url=f"{running.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        usage = (await http.get("/usage")).json()
    assert usage["quota"] == 60
    assert usage["used"] == usage["input_tokens"] + usage["output_tokens"] >= 60
    assert usage["used"] == await spent(db, user), "usage adds up to the stored replies"

    # The operator lifts this user's quota: the next turn goes through.
    env = os.environ | {"DATABASE_URL": database_url}
    lifted = await quota_command(env, user, "0")
    assert lifted.returncode == 0, lifted.stderr
    assert "no quota" in lifted.stdout
    await client.send(Send(id="t3", conversation_id=cid, text="thanks " + directive(tokens=5)))
    await client.expect(Ack)
    end, _ = await client.until(TurnEnd)
    assert end.finish_reason == "stop"
    await client.close()
    unknown = await quota_command(env, f"nobody-{uuid.uuid4().hex}", "5")
    assert unknown.returncode != 0
    assert "no user" in unknown.stderr


async def test_a_quota_spent_on_one_replica_holds_on_the_other(
    replicas: Callable[..., list[Replica]],
    db: async_sessionmaker[AsyncSession],
) -> None:
    a, b = replicas(2, DAILY_TOKEN_QUOTA="80")
    user = new_user()
    on_a, on_b = await Client.connect(a.ws), await Client.connect(b.ws)
    await on_a.hello(user)
    await on_b.hello(user)
    cid = await on_a.create()
    await on_a.send(Send(id="t1", conversation_id=cid, text="hi " + directive(tokens=30)))
    await on_a.expect(Ack)
    end, _ = await on_a.until(TurnEnd)
    assert end.finish_reason == "stop", "within the quota"
    # B streams the next reply; it crosses the quota A's reply left, mid-stream.
    other = await on_b.create()
    await on_b.send(Send(id="t2", conversation_id=other, text="go " + directive(tokens=300)))
    await on_b.expect(Ack)
    end, _ = await on_b.until(TurnEnd)
    assert end.finish_reason == "quota"
    assert 0 < len(end.message.text.split()) < 300, "the text so far is kept"
    # Spent: refused on both replicas before a turn starts.
    for client, conversation in ((on_a, cid), (on_b, other)):
        await client.send(Send(id="t3", conversation_id=conversation, text="more"))
        refused = await client.expect(Error)
        assert (refused.id, refused.code) == ("t3", "quota_exceeded")
    async with httpx.AsyncClient(
        base_url=f"{a.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        usage = (await http.get("/usage")).json()
    assert usage["used"] == await spent(db, user) >= 80, "usage adds up, from both replicas"
    await on_a.close()
    await on_b.close()
