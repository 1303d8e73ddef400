"""Tools and handoffs: a real local webhook server (the user's backend), the real server,
real WebSockets, the real google-genai client against the simulator (which calls the
tools it is told to, through function calling)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shlex
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_client import ChatClient
from chat_server import tools
from chat_server.turns.toolbox import MAX_PARALLEL
from protocol.messages import (
    Ack,
    Cancel,
    ConversationUpdated,
    Join,
    Joined,
    Send,
    ServerMessage,
    ToolCall,
    ToolResult,
    TurnEnd,
    TurnStart,
)
from tests.replicas import Replica
from tests.servers import RunningServer, serve
from tests.wsclient import Client, directive, new_user, reply_text

pytestmark = pytest.mark.asyncio

DAY = {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]}


@dataclass
class Hit:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes
    started: float
    ended: float = 0.0


@dataclass
class Backend:
    """The user's backend: records every call; /hooks/<name> answers per name."""

    server: RunningServer
    hits: list[Hit] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.server.http}/hooks/{name}"

    @property
    def prefix(self) -> str:
        return f"{self.server.http}/hooks/"

    def of(self, name: str) -> list[Hit]:
        return [h for h in self.hits if h.path == name]


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    hits: list[Hit] = []

    async def hook(request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        hit = Hit(name, orjson.loads(raw), dict(request.headers), raw, time.monotonic())
        hits.append(hit)
        args = hit.body["arguments"]
        try:
            if name in ("calendar", "weather"):
                await asyncio.sleep(0.3)  # long enough to see parallel calls overlap
                if name == "calendar":
                    return Response(orjson.dumps({"events": [f"standup on {args['day']}"]}))
                return Response(orjson.dumps({"forecast": "sunny"}))
            if name == "slow":
                await asyncio.sleep(5)
                return Response(b"{}")
            if name == "fail":
                return Response(b"backend down", status_code=503)
            if name == "big":
                return Response(orjson.dumps({"blob": "x" * 5000}))
            return Response(orjson.dumps({"echo": args}))
        finally:
            hit.ended = time.monotonic()

    app = Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])
    running = serve(app)
    yield Backend(running, hits)
    running.stop()


@pytest.fixture
def tool_server(start_server: Callable[..., RunningServer], backend: Backend) -> RunningServer:
    return start_server(tool_url_allowlist=backend.prefix)


def calling(names: str, rounds: int = 1, **args: Any) -> str:
    """The directive that makes the simulator call ``names`` (comma-separated) with
    ``args``, ``rounds`` times."""
    return directive(call=names, rounds=rounds, args=shlex.quote(orjson.dumps(args).decode()))


def api(server: RunningServer, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    )


async def first_assistant(http: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await http.get("/assistants")).json()[0])


async def add_tool(
    http: httpx.AsyncClient, assistant_id: str, name: str, url: str, **extra: Any
) -> dict[str, Any]:
    body = {"name": name, "description": f"the {name} tool", "parameters": DAY, "url": url}
    response = await http.post(f"/assistants/{assistant_id}/tools", json=body | extra)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def with_tool(server: RunningServer, backend: Backend, name: str, **extra: Any) -> str:
    """A new user whose first assistant has the backend's tool ``name``."""
    user = new_user()
    async with api(server, user) as http:
        aid = (await first_assistant(http))["id"]
        await add_tool(http, aid, name, backend.url(name), **extra)
    return user


async def device(url: str, user: str, cid: uuid.UUID | None = None) -> Client:
    client = await Client.connect(url)
    await client.hello(user)
    if cid is not None:
        await client.send(Join(conversation_id=cid))
        await client.expect(Joined)
    return client


def of(frames: list[ServerMessage], kind: type[Any]) -> list[Any]:
    return [f for f in frames if isinstance(f, kind)]


def verified(hit: Hit, secret: str) -> bool:
    """What the user's backend does with a call: check its signature and its age."""
    parts = dict(p.split("=", 1) for p in hit.headers["x-chat-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + hit.raw, hashlib.sha256)
    fresh = abs(time.time() - int(parts["t"])) < 60
    return fresh and hmac.compare_digest(parts["v1"], expected.hexdigest())


async def test_a_tool_call_is_signed_seen_by_every_device_and_its_result_reaches_the_model(
    tool_server: RunningServer,
    backend: Backend,
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    user = new_user()
    async with api(tool_server, user) as http:
        assistant = await first_assistant(http)
        calendar = await add_tool(http, assistant["id"], "calendar", backend.url("calendar"))
    phone = await device(tool_server.ws, user)
    cid = await phone.create()
    laptop = await device(tool_server.ws, user, cid)
    call = calling("calendar", day="monday")
    await phone.send(Send(id="1", conversation_id=cid, text=f"what is on monday? {call}"))
    for client in (phone, laptop):
        end, frames = await client.until(TurnEnd)
        (asked,) = of(frames, ToolCall)
        (answered,) = of(frames, ToolResult)
        assert (asked.name, asked.arguments, asked.offset) == ("calendar", {"day": "monday"}, 0)
        assert (answered.call_id, answered.ok) == (asked.call_id, True)
        assert answered.result == {"events": ["standup on monday"]}
        assert frames.index(asked) < frames.index(answered)
        assert reply_text(frames, end.turn_id) == end.message.text
        assert "standup on monday" in end.message.text, "the model answered with the result"
        (stored,) = end.message.tools
        assert (stored.call_id, stored.ok, stored.result) == (asked.call_id, True, answered.result)

    (hit,) = backend.of("calendar")[-1:]
    assert hit.body["arguments"] == {"day": "monday"}
    assert hit.body["tool"] == "calendar"
    assert hit.headers["x-chat-tool-call"] == hit.body["call_id"]
    assert verified(hit, calendar["secret"]), "signed with the tool's secret"
    assert not verified(hit, "another secret")
    first, second = sim_requests()[-2:]
    declared = first["body"]["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declared] == ["calendar"]
    response = second["body"]["contents"][-1]["parts"][0]["functionResponse"]
    assert response["response"] == {"result": {"events": ["standup on monday"]}}

    # A device that reconnects sees the call in history; the next request has it too.
    await laptop.close()
    laptop = await device(tool_server.ws, user, cid)
    await phone.send(Send(id="2", conversation_id=cid, text="thanks"))
    await phone.until(TurnEnd)
    contents = sim_requests()[-1]["body"]["contents"]
    kinds = [next(iter(c["parts"][0])) for c in contents]
    assert kinds == ["text", "functionCall", "functionResponse", "text", "text"]
    from protocol.messages import History, HistoryPage

    await laptop.send(History(conversation_id=cid))
    page, _ = await laptop.until(HistoryPage)
    assert [t.name for t in page.messages[1].tools] == ["calendar"]
    await phone.close()
    await laptop.close()


async def test_parallel_and_sequential_calls_in_one_turn(
    tool_server: RunningServer, backend: Backend
) -> None:
    user = new_user()
    async with api(tool_server, user) as http:
        assistant = await first_assistant(http)
        for name in ("calendar", "weather"):
            await add_tool(http, assistant["id"], name, backend.url(name))
    client = await device(tool_server.ws, user)
    cid = await client.create()
    before = len(backend.hits)
    calls = calling("calendar,weather", rounds=2, day="friday")
    await client.send(Send(id="1", conversation_id=cid, text=f"plan friday {calls}"))
    end, frames = await client.until(TurnEnd)
    assert end.finish_reason == "stop"
    assert [c.name for c in of(frames, ToolCall)] == ["calendar", "weather"] * 2
    assert all(r.ok for r in of(frames, ToolResult))
    assert len({c.call_id for c in of(frames, ToolCall)}) == 4
    assert len(end.message.tools) == 4
    hits = backend.hits[before:]
    assert len(hits) == 4
    for a, b in (hits[0:2], hits[2:4]):  # each round's two calls ran at once
        assert a.started < b.ended, "parallel calls overlap"
        assert b.started < a.ended, "parallel calls overlap"
    assert hits[1].ended <= hits[2].started + 0.05, "the second round follows the first"
    await client.close()


async def test_failing_tools_become_error_results_the_model_sees(
    tool_server: RunningServer,
    backend: Backend,
    sim_requests: Callable[[], list[dict[str, Any]]],
) -> None:
    user = new_user()
    strict = {"type": "object", "properties": {"day": {"type": "integer"}}, "required": ["day"]}
    async with api(tool_server, user) as http:
        assistant = await first_assistant(http)
        aid = assistant["id"]
        await add_tool(http, aid, "slow", backend.url("slow"), timeout_ms=300)
        await add_tool(http, aid, "fail", backend.url("fail"), idempotent=True, timeout_ms=5000)
        await add_tool(http, aid, "big", backend.url("big"), max_result_bytes=1024)
        await add_tool(http, aid, "strict", backend.url("strict"), parameters=strict)
    client = await device(tool_server.ws, user)
    cid = await client.create()
    fails_before = len(backend.of("fail"))
    calls = calling("slow,fail,big,strict", day="monday")
    started = time.monotonic()
    await client.send(Send(id="1", conversation_id=cid, text=f"try everything {calls}"))
    end, frames = await client.until(TurnEnd)
    assert end.finish_reason == "stop", "the turn goes on after failed tools"
    assert time.monotonic() - started < 5, "the slow tool timed out; the turn did not hang"
    errors = {r.name: r.error.code for r in of(frames, ToolResult) if r.error is not None}
    assert errors == {
        "slow": "tool_timeout",
        "fail": "tool_failed",
        "big": "tool_result_too_large",
        "strict": "tool_bad_arguments",
    }
    assert not backend.of("strict"), "bad arguments never reach the backend"
    retried = backend.of("fail")[fails_before:]
    assert len(retried) == 1 + len(tools.RETRY_DELAYS_S), "an idempotent tool is retried"
    assert len({h.headers["x-chat-tool-call"] for h in retried}) == 1, "with the same call id"
    responses = [p["functionResponse"] for p in sim_requests()[-1]["body"]["contents"][-1]["parts"]]
    assert {r["name"]: r["response"]["error"]["code"] for r in responses} == errors
    await client.close()


async def test_a_url_outside_the_allowlist_is_refused_when_saved_and_when_called(
    start_server: Callable[..., RunningServer], backend: Backend, tool_server: RunningServer
) -> None:
    user = new_user()
    async with api(tool_server, user) as http:
        aid = (await first_assistant(http))["id"]
        body = {"name": "x", "description": "d", "parameters": DAY}
        for url in (
            "http://169.254.169.254/latest/meta-data/",
            f"{backend.server.http}/elsewhere/",
            f"http://user@127.0.0.1:{backend.server.port}/hooks/echo",
        ):
            refused = await http.post(f"/assistants/{aid}/tools", json=body | {"url": url})
            assert refused.status_code == 422, url
            assert "TOOL_URL_ALLOWLIST" in refused.json()["message"]
        bad_schema = body | {"url": backend.url("echo"), "parameters": {"type": "array"}}
        assert (await http.post(f"/assistants/{aid}/tools", json=bad_schema)).status_code == 422
        await add_tool(http, aid, "echo", backend.url("echo"))
    # The same tool, called by a server whose allowlist no longer has it.
    strict = start_server(tool_url_allowlist="https://api.example.com/")
    client = await device(strict.ws, user)
    cid = await client.create()
    before = len(backend.hits)
    text = "echo " + calling("echo", day="monday")
    await client.send(Send(id="1", conversation_id=cid, text=text))
    _, frames = await client.until(TurnEnd)
    (result,) = of(frames, ToolResult)
    assert result.error is not None
    assert result.error.code == "tool_not_allowed"
    assert len(backend.hits) == before
    await client.close()


async def test_cancel_stops_a_turn_waiting_on_a_tool(
    tool_server: RunningServer, backend: Backend
) -> None:
    user = await with_tool(tool_server, backend, "slow", timeout_ms=20_000)
    client = await device(tool_server.ws, user)
    cid = await client.create()
    text = "wait " + calling("slow", day="monday")
    await client.send(Send(id="1", conversation_id=cid, text=text))
    start, _ = await client.until(TurnStart)
    await client.until(ToolCall)
    cancelled = time.monotonic()
    await client.send(Cancel(conversation_id=cid, turn_id=start.turn_id))
    end, _ = await client.until(TurnEnd)
    assert time.monotonic() - cancelled < 2
    assert end.finish_reason == "cancelled"
    (call,) = end.message.tools
    assert call.error is not None
    assert call.error.code == "tool_cancelled"
    await client.close()


async def test_a_handoff_passes_the_turn_to_a_teammate_and_teaches_the_router(
    server: RunningServer,
) -> None:
    user = new_user()
    async with api(server, user) as http:
        secretary = await first_assistant(http)
        mika = (await http.post("/assistants", json={"name": "Mika"})).json()
    phone = await device(server.ws, user)
    cid = await phone.create()
    text = "please file my taxi receipt as an expense " + directive(handoff="Mika")
    await phone.send(Send(id="1", conversation_id=cid, text=text))
    await phone.expect(Ack)
    first, frames = await phone.until(TurnEnd)
    start = of(frames, TurnStart)[0]
    assert start.assistant.id == uuid.UUID(secretary["id"])
    (call,) = of(frames, ToolCall)
    assert (call.name, call.arguments["assistant"]) == ("handoff", "Mika")
    assert first.finish_reason == "handoff"
    second, frames = await phone.until(TurnEnd)
    handed = of(frames, TurnStart)[0]
    assert handed.assistant.id == uuid.UUID(mika["id"])
    assert handed.reply_to == start.reply_to, "the teammate answers the same user turn"
    assert handed.route.reason == "handoff"
    assert handed.route.handoff_from == uuid.UUID(secretary["id"])
    assert handed.route.why is not None
    assert "Mika" in handed.route.why
    assert second.finish_reason == "stop"
    assert second.message.parent_id == first.turn_id, "it follows the reply that handed over"
    updated = of(frames, ConversationUpdated)
    assert updated, "devices hear the conversation's assistant changed"
    assert updated[-1].conversation.assistant_id == uuid.UUID(mika["id"])

    # The router learned it: a similar turn in a new conversation goes to Mika first.
    async with api(server, user) as http:
        dry = await http.post("/route", json={"text": "file my taxi receipt as an expense"})
        assert dry.json()["assistant"]["id"] == mika["id"], dry.json()
    await phone.close()


async def test_a_handoff_loop_stops(
    server: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    user = new_user()
    async with api(server, user) as http:
        secretary = await first_assistant(http)
        await http.post("/assistants", json={"name": "Mika"})
    phone = await device(server.ws, user)
    cid = await phone.create()
    # Each would hand to the other: Secretary -> Mika, then Mika may not hand back.
    text = "who does this? " + directive(handoff=f"Mika,{secretary['name']}")
    await phone.send(Send(id="1", conversation_id=cid, text=text))
    first, _ = await phone.until(TurnEnd)
    second, _ = await phone.until(TurnEnd)
    assert (first.finish_reason, second.finish_reason) == ("handoff", "stop")
    offered = [
        [d["name"] for t in r["body"].get("tools", []) for d in t["functionDeclarations"]]
        for r in sim_requests()[-2:]
    ]
    assert offered == [["handoff"], []], "Mika is offered nobody to hand back to"
    await asyncio.sleep(0.5)
    await phone.send(Send(id="2", conversation_id=cid, text="ok"))
    await phone.expect(Ack)
    third, _ = await phone.until(TurnEnd)
    assert third.finish_reason == "stop", "no third reply from a loop"
    await phone.close()


async def test_tool_events_cross_replicas_and_a_killed_replica_does_not_call_twice(
    replicas: Callable[..., list[Replica]], backend: Backend
) -> None:
    a, b = replicas(2, TOOL_URL_ALLOWLIST=backend.prefix)
    user = new_user()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{a.port}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        aid = (await first_assistant(http))["id"]
        await add_tool(http, aid, "calendar", backend.url("calendar"))
        await add_tool(http, aid, "slow", backend.url("slow"), timeout_ms=20_000)
    on_a = await device(a.ws, user)
    cid = await on_a.create()
    on_b = await device(b.ws, user, cid)
    text = "monday? " + calling("calendar", day="monday")
    await on_a.send(Send(id="1", conversation_id=cid, text=text))
    end, frames = await on_b.until(TurnEnd)
    assert [type(f).__name__ for f in frames if isinstance(f, ToolCall | ToolResult)] == [
        "ToolCall",
        "ToolResult",
    ]
    assert end.message.tools[0].ok

    slow_before = len(backend.of("slow"))
    await on_a.send(
        Send(
            id="2",
            conversation_id=cid,
            text="wait " + calling("slow", day="x"),
        )
    )
    await on_b.until(ToolCall)
    async with asyncio.timeout(10):
        # The backend runs on its own thread and loop: polled, not an asyncio.Event.
        while len(backend.of("slow")) == slow_before:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    a.process.send_signal(signal.SIGKILL)  # the replica waiting for the tool dies
    end, _ = await on_b.until(TurnEnd, timeout=30)
    assert end.finish_reason == "error"
    assert end.error is not None
    assert end.error.retryable
    await asyncio.sleep(1)
    assert len(backend.of("slow")) == slow_before + 1, "the tool was called once"
    await on_a.close()
    await on_b.close()


async def test_the_python_client_keeps_a_replys_tool_calls(
    tool_server: RunningServer, backend: Backend
) -> None:
    user = await with_tool(tool_server, backend, "echo")
    client = ChatClient(tool_server.ws, user)
    await client.connect()
    info = await client.create("tools")
    result = client.next("tool_result")
    ended = client.next("turn_end")
    await client.send(info.id, "echo " + calling("echo", day="sunday"))
    seen: ToolResult = await asyncio.wait_for(result, 10)
    await asyncio.sleep(0)  # the result is applied after listeners saw it
    reply = client.state.conversations[info.id].replies[seen.turn_id]
    assert [(t.name, t.ok, t.result) for t in reply.tools] == [
        ("echo", True, {"echo": {"day": "sunday"}})
    ]
    end: TurnEnd = await asyncio.wait_for(ended, 10)
    assert [t.arguments for t in reply.tools] == [{"day": "sunday"}]
    assert end.message.tools == reply.tools
    await client.close()


async def test_more_parallel_calls_than_allowed_are_refused_not_sent(
    tool_server: RunningServer, backend: Backend
) -> None:
    user = await with_tool(tool_server, backend, "echo")
    client = await device(tool_server.ws, user)
    cid = await client.create()
    before = len(backend.of("echo"))
    many = ",".join(["echo"] * (MAX_PARALLEL + 1))
    await client.send(Send(id="1", conversation_id=cid, text="all " + calling(many, day="x")))
    end, frames = await client.until(TurnEnd)
    results = of(frames, ToolResult)
    assert len(results) == MAX_PARALLEL + 1
    skipped = [r for r in results if r.error is not None]
    assert [r.error.code for r in skipped if r.error] == ["tool_skipped"]
    assert len(backend.of("echo")) - before == MAX_PARALLEL
    assert end.finish_reason == "stop"
    await client.close()
