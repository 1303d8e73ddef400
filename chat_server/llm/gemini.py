"""Gemini through google-genai, streaming. The only module that imports google.genai.

A reply streams through the SDK's API client (its transport, auth, base URL, retries and
error types) with a request body built here and chunks read as JSON here. The SDK's
``generate_content_stream`` would validate the request into pydantic models, walk them
back into the same JSON, and build a pydantic response per chunk: that was ~30 % of a
replica's event-loop CPU per turn (py-spy, load/bench_turns.py). What goes on the wire
is the SDK's own, to the byte of JSON: tests/test_llm.py compares the two.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from google import genai
from google.genai import errors, types

from chat_server.llm import ChatTurn, FunctionCall, LLMChunk, LLMError, LLMRequest
from protocol.errors import ErrorCode

_FINISH: dict[str, str] = {
    types.FinishReason.STOP.value: "stop",
    types.FinishReason.MAX_TOKENS.value: "length",
    types.FinishReason.SAFETY.value: "safety",
    types.FinishReason.RECITATION.value: "safety",
    types.FinishReason.BLOCKLIST.value: "safety",
    types.FinishReason.PROHIBITED_CONTENT.value: "safety",
    types.FinishReason.SPII.value: "safety",
}


class GeminiEmbedder:
    """Gemini embeddings (``batchEmbedContents``) cut to the vector columns' width."""

    def __init__(self, *, api_key: str, base_url: str | None, model: str, dim: int) -> None:
        self._client = genai.Client(
            api_key=api_key, http_options=types.HttpOptions(base_url=base_url)
        )
        self._model = model
        self._dim = dim
        self.name = f"gemini:{model}:{dim}"
        # Semantic embeddings put unrelated text far above 0: a starting point to tune.
        self.default_threshold = 0.6
        self.min_confidence = 0.8  # semantic, like the offline model (router.abstain)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        contents: list[types.ContentUnion] = [text for text in texts]
        try:
            response = await self._client.aio.models.embed_content(
                model=self._model,
                contents=contents,
                config=types.EmbedContentConfig(
                    output_dimensionality=self._dim, task_type="SEMANTIC_SIMILARITY"
                ),
            )
        except errors.APIError as exc:
            raise _api_error(exc) from exc
        vectors = [list(e.values or []) for e in response.embeddings or []]
        if len(vectors) != len(texts) or any(len(v) != self._dim for v in vectors):
            raise LLMError(ErrorCode.LLM_UNAVAILABLE, "embedding response has the wrong shape")
        return [_unit(v) for v in vectors]

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def _unit(vector: list[float]) -> list[float]:
    # Gemini normalises only its full-width output; truncated vectors must be rescaled.
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


# The SDK's back-off between attempts, set here so its total is known (retry_budget_s).
RETRY_INITIAL_S, RETRY_MAX_S, RETRY_JITTER_S = 1.0, 8.0, 1.0


class GeminiProvider:
    def __init__(self, *, api_key: str, base_url: str | None, attempts: int) -> None:
        retry = (
            types.HttpRetryOptions(
                attempts=attempts,
                http_status_codes=[429, 500, 502, 503, 504],
                initial_delay=RETRY_INITIAL_S,
                max_delay=RETRY_MAX_S,
                exp_base=2,
                jitter=RETRY_JITTER_S,
            )
            if attempts > 1
            else None
        )
        # The longest the SDK may spend backing off before the first chunk.
        self.retry_budget_s = sum(
            min(RETRY_MAX_S, RETRY_INITIAL_S * 2**i) + RETRY_JITTER_S for i in range(attempts - 1)
        )
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(base_url=base_url, retry_options=retry),
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        path = f"{_model_path(request.model)}:streamGenerateContent?alt=sse"
        try:
            chunks = await self._client.aio._api_client.async_request_streamed(
                "post", path, _request_body(request)
            )
            async for chunk in chunks:
                yield _convert(_loads(chunk.body) if chunk.body else {})
        except errors.APIError as exc:
            raise _api_error(exc) from exc
        except Exception as exc:
            # Connection refused/reset or a cut stream. The SDK may run on httpx or httpx2
            # (GOOGLE_GENAI_HTTP_CLIENT), so transport errors have no single base class.
            raise LLMError(ErrorCode.LLM_UNAVAILABLE, f"model connection failed: {exc!r}") from exc


def _loads(body: str) -> dict[str, Any]:
    try:
        return orjson.loads(body)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError:  # a lone surrogate (escaped): orjson refuses it
        return json.loads(body)  # type: ignore[no-any-return]


def _model_path(model: str) -> str:
    """The SDK's ``t_model`` for the Gemini API: a bare name is under ``models/``."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def _request_body(request: LLMRequest) -> dict[str, Any]:
    """``streamGenerateContent``'s body, as the SDK writes it for the same request."""
    body: dict[str, Any] = {"contents": [_content(turn) for turn in request.history]}
    if request.system_prompt:
        body["systemInstruction"] = {"parts": [{"text": request.system_prompt}], "role": "user"}
    if request.tools:
        declarations = [
            {"description": t.description, "name": t.name, "parameters_json_schema": t.parameters}
            for t in request.tools
        ]
        body["tools"] = [{"functionDeclarations": declarations}]
    config: dict[str, Any] = {"maxOutputTokens": request.max_output_tokens}
    if request.thinking_budget is not None:
        config["thinkingConfig"] = {
            "include_thoughts": request.include_thoughts and request.thinking_budget != 0,
            "thinking_budget": request.thinking_budget,
        }
    body["generationConfig"] = config
    return body


def _content(turn: ChatTurn) -> dict[str, Any]:
    """A history turn on the wire: text, then its function calls or results."""
    parts: list[dict[str, Any]] = (
        [{"text": turn.text}] if turn.text or not (turn.calls or turn.results) else []
    )
    parts += [{"functionCall": {"id": c.id, "args": c.args, "name": c.name}} for c in turn.calls]
    parts += [
        {"functionResponse": {"id": r.id, "name": r.name, "response": r.response}}
        for r in turn.results
    ]
    return {"parts": parts, "role": turn.role}


def _convert(chunk: dict[str, Any]) -> LLMChunk:
    """One streamed ``GenerateContentResponse`` (JSON) as an ``LLMChunk``."""
    text = thought = ""
    finish: str | None = None
    calls: tuple[FunctionCall, ...] = ()
    candidates = chunk.get("candidates")
    if candidates:
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(p["text"] for p in parts if p.get("text") and not p.get("thought"))
        thought = "".join(p["text"] for p in parts if p.get("text") and p.get("thought"))
        calls = tuple(
            FunctionCall(
                id=call.get("id") or "",  # Gemini may leave it out: the caller names it
                name=call.get("name") or "",
                args=dict(call.get("args") or {}),
            )
            for p in parts
            if (call := p.get("functionCall")) is not None
        )
        if candidate.get("finishReason") is not None:
            finish = _FINISH.get(candidate["finishReason"], "error")
    elif (chunk.get("promptFeedback") or {}).get("blockReason"):
        finish = "safety"
    usage = chunk.get("usageMetadata")
    return LLMChunk(
        text=_utf8(text),
        finish_reason=finish,
        input_tokens=usage.get("promptTokenCount") if usage else None,
        output_tokens=usage.get("candidatesTokenCount") if usage else None,
        thought=_utf8(thought),
        thought_tokens=usage.get("thoughtsTokenCount") if usage else None,
        calls=calls,
    )


def _utf8(text: str) -> str:
    """json.loads lets lone surrogates through; they cannot be encoded back to UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _api_error(exc: errors.APIError) -> LLMError:
    detail = f"model returned {exc.code} {exc.status}: {exc.message}"
    if exc.code == 429:
        return LLMError(ErrorCode.LLM_RATE_LIMITED, detail, retry_after_ms=1000)
    if exc.code is not None and 400 <= exc.code < 500:
        return LLMError(ErrorCode.LLM_REJECTED, detail)
    return LLMError(ErrorCode.LLM_UNAVAILABLE, detail)
