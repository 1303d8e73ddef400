"""llm/gemini.py through the real google-genai client against the simulator: what goes
on the wire, and how the stream comes back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google import genai
from google.genai import types

from chat_server.llm import (
    ChatTurn,
    FunctionCall,
    FunctionResult,
    LLMChunk,
    LLMRequest,
    ToolDeclaration,
)
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


RICH = LLMRequest(
    model="gemini-2.5-flash",
    system_prompt="Be brief.",
    history=[
        ChatTurn(role="user", text="echo this ☃"),
        ChatTurn(role="model", text="", calls=(FunctionCall("c1", "echo", {"w": [1, 2.5, None]}),)),
        ChatTurn(role="user", text="", results=(FunctionResult("c1", "echo", {"result": "☃"}),)),
        ChatTurn(role="model", text="It said ☃.", calls=(FunctionCall("", "echo", {}),)),
        ChatTurn(
            role="user", text='again [[sim chunk=3 think_tokens=9 reply="one two three four"]]'
        ),
    ],
    max_output_tokens=50,
    thinking_budget=-1,
    include_thoughts=True,
    tools=[ToolDeclaration("echo", "echoes", {"type": "object", "properties": {}})],
)


def _sdk_chunk(chunk: types.GenerateContentResponse) -> LLMChunk:
    """An ``LLMChunk`` read from the SDK's own response model: the reference."""
    parts = chunk.candidates[0].content.parts or [] if chunk.candidates else []
    candidate = chunk.candidates[0] if chunk.candidates else None
    usage = chunk.usage_metadata
    return LLMChunk(
        text="".join(p.text for p in parts if p.text and not p.thought),
        finish_reason="stop"
        if candidate and candidate.finish_reason == types.FinishReason.STOP
        else None,
        input_tokens=usage.prompt_token_count if usage else None,
        output_tokens=usage.candidates_token_count if usage else None,
        thought="".join(p.text for p in parts if p.text and p.thought),
        thought_tokens=usage.thoughts_token_count if usage else None,
        calls=tuple(
            FunctionCall(
                p.function_call.id or "", p.function_call.name or "", p.function_call.args or {}
            )
            for p in parts
            if p.function_call
        ),
    )


async def test_the_body_and_the_chunks_are_the_sdks_own(
    simulator: RunningServer, sim_requests: Callable[[], list[dict[str, Any]]]
) -> None:
    """gemini.py writes the request and reads the chunks itself (the SDK's models cost
    ~30 % of a turn's CPU): both must be what google-genai's ``generate_content_stream``
    sends and reads for the same request."""
    provider = GeminiProvider(api_key="k", base_url=simulator.http, attempts=1)
    ours = [chunk async for chunk in provider.stream(RICH)]
    await provider.aclose()
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=simulator.http))
    config = types.GenerateContentConfig(
        system_instruction=RICH.system_prompt,
        max_output_tokens=RICH.max_output_tokens,
        tools=[
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=t.name, description=t.description, parameters_json_schema=t.parameters
                    )
                    for t in RICH.tools
                ]
            )
        ],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        thinking_config=types.ThinkingConfig(thinking_budget=-1, include_thoughts=True),
    )
    contents = [
        types.Content(
            role=turn.role,
            parts=([types.Part(text=turn.text)] if turn.text else [])
            + [
                types.Part(function_call=types.FunctionCall(id=c.id, name=c.name, args=c.args))
                for c in turn.calls
            ]
            + [
                types.Part(
                    function_response=types.FunctionResponse(
                        id=r.id, name=r.name, response=r.response
                    )
                )
                for r in turn.results
            ],
        )
        for turn in RICH.history
    ]
    stream = await client.aio.models.generate_content_stream(
        model=RICH.model, contents=contents, config=config
    )
    reference = [_sdk_chunk(chunk) async for chunk in stream]
    await client.aio.aclose()

    mine, sdks = (r["body"] for r in sim_requests())
    assert mine == sdks
    assert ours == reference
    assert "".join(c.thought for c in ours), "the stream had thoughts to compare"
    assert "".join(c.text for c in ours) == "one two three four"
    assert ours[-1].finish_reason == "stop"
    assert ours[-1].thought_tokens
