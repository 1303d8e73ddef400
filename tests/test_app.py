"""app.py / http.py: wiring, health and readiness, the built-in simulator, restarts."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.storage import queries, teams
from chat_server.storage.models import Assistant
from chat_server.storage.models import Message as MessageRow
from protocol.messages import (
    Ack,
    Error,
    Join,
    Joined,
    Message,
    Send,
    TurnEnd,
    TurnStart,
)
from tests.servers import RunningServer, free_port
from tests.wsclient import Client, new_user

pytestmark = pytest.mark.asyncio


async def test_index_links_every_entry_point(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        index = await http.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    for link in ('href="/protocol.json"', 'href="/api/v1/openapi.json"', 'href="/health"'):
        assert link in index.text
    assert f"ws://127.0.0.1:{server.port}/ws" in index.text


async def test_the_pages_javascript_is_served_compressed_and_small(server: RunningServer) -> None:
    """Every script the page loads, as a browser fetches it: ES modules with a JavaScript
    MIME type, gzipped, 100 KB at most in all (the page's budget)."""
    scripts = [
        "/web/app.js",
        "/client/client.js",
        "/client/protocol.js",
        "/web/vendor/marked.esm.js",
        "/web/vendor/purify.es.mjs",
    ]
    sent = 0
    async with httpx.AsyncClient(base_url=server.http) as http:
        for path in scripts:
            async with http.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as r:
                assert r.status_code == 200, path
                assert r.headers["content-type"].startswith("text/javascript"), path
                assert r.headers["content-encoding"] == "gzip", path
                sent += sum([len(chunk) async for chunk in r.aiter_raw()])
    assert sent <= 100 * 1024, f"{sent} bytes of JavaScript"


async def test_health_ready_and_protocol_spec(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        health = await http.get("/health")
        assert health.json() == {"status": "ok", "node": "test-node"}
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        spec = (await http.get("/protocol.json")).json()
        assert "send" in spec["x-client-to-server"]["discriminator"]["mapping"]
        assert spec["x-close-codes"]["4000"]["reconnect"] is True


async def test_without_api_key_replies_come_from_the_built_in_simulator(
    start_server: Callable[..., RunningServer],
) -> None:
    port = free_port()
    server = start_server(port=port, gemini_base_url=None, sim_ttft_ms=0, sim_tokens_per_s=500)
    client = await Client.connect(server.ws)
    await client.hello(new_user())
    cid = await client.create()
    await client.send(Send(id="1", conversation_id=cid, text="ping the simulator"))
    await client.expect(Ack)
    end, _ = await client.until(TurnEnd)
    assert end.finish_reason == "stop", end.error
    assert end.message.text.startswith("You said: ping the simulator.")
    # The simulator listens on loopback only, never on the server's public port, where
    # its request log would show every user's prompts to anyone.
    simulator_url = server.server.config.loaded_app.app.state.simulator_url
    async with httpx.AsyncClient() as http:
        log = (await http.get(f"{simulator_url}/_sim/requests")).json()
        for path in (
            "/_sim/gemini/_sim/requests",
            "/_sim/requests",
            "/v1/models/m:generateContent",
        ):
            assert (await http.get(f"{server.http}{path}")).status_code in (404, 405)
    assert simulator_url.startswith("http://127.0.0.1:")
    assert any("ping the simulator" in str(r["body"]) for r in log)
    await client.close()


async def test_a_reply_left_streaming_by_a_dead_run_ends_as_an_error_once_its_lease_lapses(
    start_server: Callable[..., RunningServer], db: async_sessionmaker[AsyncSession]
) -> None:
    user = new_user()
    async with db.begin() as s:
        owner = await queries.ensure_user(s, user, default_model="m")
        assistant = await teams.first_assistant(s, owner.id)
        assert assistant is not None
        conversation = await queries.create_conversation(
            s, owner.id, title=None, default_assistant_id=assistant.id
        )
        stored = await queries.store_turn(
            s, conversation.id, client_id="c", text="hi", assistant_id=assistant.id, reply_meta={}
        )
        assert stored.reply is not None
        await s.flush()
        stored.reply.text = "half a rep"
    server = start_server(lease_ms=300)  # nobody renews this reply's lease
    client = await Client.connect(server.ws)
    await client.hello(user)
    await client.send(Join(conversation_id=conversation.id, after_seq=0))
    await client.expect(Joined)
    user_msg = await client.expect(Message)
    assert user_msg.message.text == "hi"
    end = await client.expect(TurnEnd, timeout=5)  # sent live by the sweeper
    assert (end.turn_id, end.finish_reason) == (stored.reply.id, "error")
    assert (end.message.status, end.message.text) == ("error", "half a rep")
    assert end.error is not None
    assert end.error.retryable is True
    async with db() as s:
        row = await s.get(MessageRow, stored.reply.id)
        assert row is not None
        assert row.status == "error"
    await client.close()


async def test_conversation_created_with_a_named_assistant_routes_to_it(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    user = new_user()
    client = await Client.connect(server.ws)
    await client.hello(user)
    async with db.begin() as s:
        owner = await queries.ensure_user(s, user, default_model="m")
        writer = Assistant(
            owner_id=owner.id,
            name="Writer",
            description="drafts",
            system_prompt="You write crisp prose.",
            default_model="gemini-writer",
        )
        s.add(writer)
        await s.flush()
        writer_id = writer.id
    cid = await client.create(assistant_id=writer_id)
    await client.send(Send(id="w", conversation_id=cid, text="draft a note"))
    await client.expect(Ack)
    end, frames = await client.until(TurnEnd)
    start = next(f for f in frames if isinstance(f, TurnStart))
    assert (start.assistant.name, start.model, start.route.reason) == (
        "Writer",
        "gemini-writer",
        "default",
    )
    assert end.message.assistant_id == writer_id
    assert end.message.model == "gemini-writer"
    await client.send(Join(id="bad", create=None, conversation_id=None))
    assert (await client.expect(Error)).code == "bad_message"
    await client.send(
        Join(
            create=__import__("protocol.messages").messages.ConversationCreate(
                assistant_id=uuid.uuid4()
            )
        )
    )
    assert (await client.expect(Error)).code == "not_found"
    await client.close()
