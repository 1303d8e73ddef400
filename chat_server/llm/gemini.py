"""Gemini through google-genai, streaming. The only module that imports google.genai."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence

from google import genai
from google.genai import errors, types

from chat_server.llm import ChatTurn, FunctionCall, LLMChunk, LLMError, LLMRequest
from protocol.errors import ErrorCode

_FINISH = {
    types.FinishReason.STOP: "stop",
    types.FinishReason.MAX_TOKENS: "length",
    types.FinishReason.SAFETY: "safety",
    types.FinishReason.RECITATION: "safety",
    types.FinishReason.BLOCKLIST: "safety",
    types.FinishReason.PROHIBITED_CONTENT: "safety",
    types.FinishReason.SPII: "safety",
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
        # Plain dicts (the SDK's TypedDicts), not types.Content models: the SDK validates
        # the request either way, and validating model instances costs about 5x more
        # (40 history messages: 12.9 vs 2.3 ms of CPU per request). The wire format is
        # the same; tests/test_llm.py pins it.
        contents: types.ContentListUnionDict = [_content(turn) for turn in request.history]
        config = types.GenerateContentConfigDict(
            system_instruction=request.system_prompt or None,
            max_output_tokens=request.max_output_tokens,
        )
        if request.tools:
            declarations = [
                types.FunctionDeclarationDict(
                    name=tool.name,
                    description=tool.description,
                    parameters_json_schema=tool.parameters,
                )
                for tool in request.tools
            ]
            config["tools"] = [types.ToolDict(function_declarations=declarations)]
            # The server runs the tools itself (on the user's backend), never the SDK.
            config["automatic_function_calling"] = {"disable": True}
        if request.thinking_budget is not None:
            config["thinking_config"] = types.ThinkingConfigDict(
                thinking_budget=request.thinking_budget,
                include_thoughts=request.include_thoughts and request.thinking_budget != 0,
            )
        try:
            response = await self._client.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
            async for chunk in response:
                yield _convert(chunk)
        except errors.APIError as exc:
            raise _api_error(exc) from exc
        except Exception as exc:
            # Connection refused/reset or a cut stream. The SDK may run on httpx or httpx2
            # (GOOGLE_GENAI_HTTP_CLIENT), so transport errors have no single base class.
            raise LLMError(ErrorCode.LLM_UNAVAILABLE, f"model connection failed: {exc!r}") from exc


def _content(turn: ChatTurn) -> types.ContentDict:
    """A history turn on the wire: text, then its function calls or results."""
    parts = (
        [types.PartDict(text=turn.text)] if turn.text or not (turn.calls or turn.results) else []
    )
    parts += [
        types.PartDict(function_call=types.FunctionCallDict(id=c.id, name=c.name, args=c.args))
        for c in turn.calls
    ]
    parts += [
        types.PartDict(
            function_response=types.FunctionResponseDict(id=r.id, name=r.name, response=r.response)
        )
        for r in turn.results
    ]
    return types.ContentDict(role=turn.role, parts=parts)


def _convert(chunk: types.GenerateContentResponse) -> LLMChunk:
    text = thought = ""
    finish: str | None = None
    calls: tuple[FunctionCall, ...] = ()
    if chunk.candidates:
        candidate = chunk.candidates[0]
        if candidate.content and candidate.content.parts:
            parts = candidate.content.parts
            text = "".join(p.text for p in parts if p.text and not p.thought)
            thought = "".join(p.text for p in parts if p.text and p.thought)
            calls = tuple(
                FunctionCall(
                    id=p.function_call.id or "",  # Gemini may leave it out: the caller names it
                    name=p.function_call.name or "",
                    args=dict(p.function_call.args or {}),
                )
                for p in parts
                if p.function_call is not None
            )
        if candidate.finish_reason is not None:
            finish = _FINISH.get(candidate.finish_reason, "error")
    elif chunk.prompt_feedback and chunk.prompt_feedback.block_reason:
        finish = "safety"
    usage = chunk.usage_metadata
    return LLMChunk(
        text=_utf8(text),
        finish_reason=finish,
        input_tokens=usage.prompt_token_count if usage else None,
        output_tokens=usage.candidates_token_count if usage else None,
        thought=_utf8(thought),
        thought_tokens=usage.thoughts_token_count if usage else None,
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
