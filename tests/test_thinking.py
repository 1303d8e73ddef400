"""Thinking: the simulator thinks like Gemini 2.5 (delay by budget, thought summaries,
thought tokens in usage), through the real google-genai client; the router gives simple
turns the low-latency budget and complex ones their assistant's; thought summaries reach
only the devices that asked, as their own events, and are never the reply's text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat_server.llm import ChatTurn, LLMChunk, LLMRequest
from chat_server.llm.gemini import GeminiProvider
from chat_server.llm.simulator import GEMINI_CHUNK, SimConfig, create_simulator
from chat_server.storage.models import Message as MessageRow
from protocol.messages import (
    Ack,
    Send,
    SessionOptions,
    Thought,
    TurnEnd,
    TurnStart,
)
from tests.servers import RunningServer, serve
from tests.wsclient import Client, directive, new_user, two_devices

pytestmark = pytest.mark.asyncio

COMPLEX = "Compare these two plans in detail, step by step, and analyze the risks."


async def stream(
    simulator: RunningServer, text: str, model: str = "gemini-2.5-flash", **thinking: Any
) -> list[LLMChunk]:
    provider = GeminiProvider(api_key="k", base_url=simulator.http, attempts=1)
    request = LLMRequest(
        model=model,
        system_prompt="",
        history=[ChatTurn(role="user", text=text)],
        max_output_tokens=500,
        **thinking,
    )
    try:
        return [chunk async for chunk in provider.stream(request)]
    finally:
        await provider.aclose()


async def test_the_simulator_thinks_by_budget_and_counts_thought_tokens(
    simulator: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    slow = directive(tokens=5, think_tps=1000, think_tokens=300)
    await stream(simulator, "warm the client up [[sim tokens=1]]", thinking_budget=0)
    timed = {}
    for budget in (0, 100, -1):
        started = time.monotonic()
        chunks = await stream(simulator, f"hi {slow}", thinking_budget=budget)
        timed[budget] = time.monotonic() - started
        last = chunks[-1]
        assert last.thought_tokens == {0: None, 100: 100, -1: 300}[budget]
        assert not any(c.thought for c in chunks), "no summary unless asked"
    config = [r["body"]["generationConfig"]["thinkingConfig"] for r in sim_requests()]
    assert [c["thinking_budget"] for c in config][1:] == [0, 100, -1]
    # 300 thinking tokens at 1000/s delay the reply by 0.3 s (a loose bound, not a speed)
    assert timed[-1] - timed[0] >= 0.2, timed

    chunks = await stream(simulator, f"hi {slow}", thinking_budget=-1, include_thoughts=True)
    thoughts = [c.thought for c in chunks if c.thought]
    assert len(thoughts) >= 2, "the summary streams in pieces"
    assert "".join(thoughts).startswith("**Understanding the request**")
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    assert all(not c.thought for c in chunks[first_text:]), "thoughts come before the text"
    assert not any("Understanding" in c.text for c in chunks), "never mixed into the text"


async def test_the_simulator_streams_chunks_of_the_size_asked_with_usage(
    simulator: RunningServer,
) -> None:
    for chunk, tokens in ((1, 10), (32, 100), (64, 100)):
        chunks = await stream(simulator, "hi " + directive(tokens=tokens, chunk=chunk, tps=5000))
        texts = [c.text for c in chunks if c.text]
        sizes = [len(pieces) for pieces in (t.split() for t in texts)]
        assert sizes == [chunk] * (tokens // chunk) + ([tokens % chunk] if tokens % chunk else [])
        assert chunks[-1].output_tokens == tokens
        assert chunks[-1].input_tokens is not None
        assert chunks[-1].input_tokens > 0


async def test_by_default_the_simulator_streams_gemini_shaped_varying_chunks() -> None:
    """Default config: 24-64 tokens per chunk, varying, repeatable for one prompt; a
    model's own pace when one is set for it."""
    pro = ("gemini-2.5-pro", 0.4, 5000.0)
    running = serve(create_simulator(SimConfig(ttft_s=0.0, tokens_per_s=5000, models=(pro,))))
    try:
        prompt = "hi " + directive(tokens=400)
        chunks = await stream(running, prompt)
        sizes = [len(c.text.split()) for c in chunks if c.text]
        assert sum(sizes) == 400
        assert all(GEMINI_CHUNK[0] <= n <= GEMINI_CHUNK[1] for n in sizes[:-1]), sizes
        assert len(set(sizes)) > 1, "sizes vary"
        again = [len(c.text.split()) for c in await stream(running, prompt) if c.text]
        assert again == sizes, "the same prompt streams the same way"
        one = [len(c.text.split()) for c in await stream(running, prompt[:-2] + " chunk=1]]")]
        assert set(one) == {1}, "one token per chunk stays available"
        started = time.monotonic()
        await stream(running, "hi", model="gemini-2.5-pro")
        assert time.monotonic() - started >= 0.4, "the pro model's own time to first token"
    finally:
        running.stop()


async def test_simple_turns_get_the_fast_budget_and_complex_ones_the_assistants(
    server: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    user = new_user()
    client = await Client.connect(server.ws)
    await client.hello(user)
    cid = await client.create()
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        assistant = (await http.get("/assistants")).json()[0]
        patched = await http.patch(f"/assistants/{assistant['id']}", json={"thinking_budget": 512})
        assert patched.json()["thinking_budget"] == 512
        dry = (await http.post("/route", json={"text": COMPLEX})).json()
        assert (dry["complexity"], dry["thinking_budget"]) == ("high", 512)
    budgets = []
    for n, text in enumerate(("hi there", COMPLEX)):
        await client.send(Send(id=str(n), conversation_id=cid, text=text))
        start, _ = await client.until(TurnStart)
        budgets.append((start.route.complexity, start.route.thinking_budget))
        await client.until(TurnEnd)
    assert budgets == [("low", 0), ("high", 512)]
    sent = [r["body"]["generationConfig"]["thinkingConfig"] for r in sim_requests()]
    assert [c["thinking_budget"] for c in sent] == [0, 512]
    assert sent[1]["include_thoughts"] is True
    await client.close()


async def test_thought_summaries_reach_only_devices_that_asked_and_are_not_stored(
    server: RunningServer, db: async_sessionmaker[AsyncSession]
) -> None:
    user, watcher, plain, cid = await two_devices(server.ws, SessionOptions(thoughts=True))
    await watcher.send(Send(id="c", conversation_id=cid, text=COMPLEX + " " + directive(tokens=8)))
    await watcher.expect(Ack)
    end, frames = await watcher.until(TurnEnd)
    thoughts = [f for f in frames if isinstance(f, Thought)]
    assert thoughts, "the watcher asked for thoughts"
    summary = "".join(t.text for t in thoughts)
    assert [t.offset for t in thoughts] == [
        len("".join(t.text for t in thoughts[:i])) for i in range(len(thoughts))
    ]
    assert "Understanding the request" in summary
    assert "Understanding" not in end.message.text
    assert end.usage.thought_tokens > 0
    _, plain_frames = await plain.until(TurnEnd)
    assert not any(isinstance(f, Thought) for f in plain_frames), "not asked: not sent"
    async with db() as s:
        stored = await s.get(MessageRow, end.turn_id)
    assert stored is not None
    assert stored.text == end.message.text
    assert "Understanding" not in stored.text
    assert stored.meta["usage"]["thought_tokens"] == end.usage.thought_tokens
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        usage = (await http.get("/usage")).json()
    spent = end.usage.input_tokens + end.usage.output_tokens + end.usage.thought_tokens
    assert usage["used"] == spent, "thinking counts toward the quota"
    await asyncio.gather(watcher.close(), plain.close())
