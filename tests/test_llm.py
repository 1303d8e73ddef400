"""llm/gemini.py through the real google-genai client against the simulator: what goes
on the wire, and how the stream comes back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from chat_server.llm import ChatTurn, LLMRequest
from chat_server.llm.gemini import GeminiProvider
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio


async def test_the_request_carries_history_system_prompt_and_token_limit(
    simulator: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    provider = GeminiProvider(api_key="k", base_url=simulator.http, attempts=1)
    history = [
        ChatTurn(role="user", text="hi"),
        ChatTurn(role="model", text="hello"),
        ChatTurn(role="user", text="and you? [[sim tokens=3]]"),
    ]
    chunks = []
    for system_prompt in ("Be brief.", ""):
        request = LLMRequest(
            model="gemini-2.5-flash",
            system_prompt=system_prompt,
            history=history,
            max_output_tokens=77,
        )
        chunks += [chunk async for chunk in provider.stream(request)]
    await provider.aclose()
    wire = [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"text": "and you? [[sim tokens=3]]"}]},
    ]
    briefed, plain = (r["body"] for r in sim_requests())
    assert briefed == {
        "contents": wire,
        "systemInstruction": {"role": "user", "parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 77},
    }
    assert plain == {"contents": wire, "generationConfig": {"maxOutputTokens": 77}}
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop", "stop"]
    assert all(c.text for c in chunks if not c.finish_reason)
