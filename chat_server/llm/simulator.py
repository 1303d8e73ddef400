"""A Gemini-wire-compatible server for development, tests and load runs.

Speaks ``POST /{version}/models/{model}:streamGenerateContent?alt=sse`` (and
``:generateContent``) the way the real API does, so the server reaches it through the
real google-genai client. It never calls out anywhere.

Pace and failures come from ``SimConfig``; any request can override them with a
directive in its last user text, e.g. ``[[sim ttft_ms=0 tps=500 fail=cut after=3]]``:

- ``ttft_ms``, ``tps`` (tokens per second), ``chunk`` (tokens per SSE event; by default
  each event carries a varying 24-64 tokens, as Gemini 2.5 streams; ``chunk=1`` is the
  one-token worst case),
  ``tokens`` (length of the default reply), ``reply="exact text"``;
- ``think_tokens`` (how long the model thinks when it decides for itself) and
  ``think_tps`` (thinking tokens per second);
- ``stamp=1``: each chunk's text starts with ``<t=UNIX_SECONDS>``, the wall-clock time
  it was emitted, so a load client on the same machine can measure what the server
  adds per chunk (``STAMP`` finds them);
- ``fail=`` ``429`` | ``500`` (HTTP error before streaming), ``cut`` (connection
  dropped after ``after`` tokens), ``stall`` (stops sending after ``after`` tokens),
  ``safety`` | ``length`` (finish reason SAFETY / MAX_TOKENS after ``after`` tokens),
  ``error_chunk`` (an in-stream ``error`` object after ``after`` tokens).

Thinking follows the request's ``generationConfig.thinkingConfig`` like Gemini 2.5:
``thinkingBudget`` 0 thinks not at all, -1 (or none given: 2.5 Flash thinks by default)
thinks ``think_tokens``, a budget thinks up to it. Thinking delays the first text token
by its tokens at ``think_tps``; with ``includeThoughts`` a thought summary streams as
``thought: true`` parts meanwhile, and ``usageMetadata.thoughtsTokenCount`` says how
many tokens thinking took.

Tools (function calling) as Gemini does them: with ``call=name[,name2]`` (and
``args='{"json": "object"}'``) a request that declares those functions is answered with
the calls (several at once: parallel calls) instead of text; ``rounds=N`` calls again
after each of the first N-1 results (sequential calls). Once the results are in, the
reply says what they were: ``Tool NAME returned {...}``. ``handoff=Name[,Name2]`` calls
the declared ``handoff`` function with the first of those names its schema allows.

``GET /_sim/requests`` returns the requests received (newest last), so tests can check
exactly what a model was sent; ``DELETE /_sim/requests`` clears them.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import re
import shlex
import threading
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_DIRECTIVE = re.compile(r"\[\[sim\s+(.*?)\]\]", re.S)
_TOKEN = re.compile(r"\s*\S+")
STAMP = re.compile(r"<t=(\d+\.\d+)>")  # emit times inserted by ``stamp=1``
_FILLER = [
    "Here",
    "is",
    "a",
    "considered",
    "answer,",
    "with",
    "the",
    "details",
    "that",
    "matter",
    "most",
    "and",
    "a",
    "short",
    "summary",
    "at",
    "the",
    "end",
    "so",
    "you",
    "can",
    "act",
    "on",
    "it",
    "right",
    "away",
    "without",
    "rereading",
    "everything.",
]
_STALL_S = 300.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    ttft_s: float = 0.3
    tokens_per_s: float = 40.0
    chunk_tokens: int = 0  # tokens per event; 0: Gemini-shaped (GEMINI_CHUNK, varying)
    reply_tokens: int = 40
    reply: str | None = None
    fail: str | None = None
    fail_after: int = 5
    stamp: bool = False
    think_tokens: int = 256  # thinking when the model decides (budget -1 or none given)
    think_tps: float = 2000.0  # fast by default; Gemini 2.5 Flash takes seconds
    calls: tuple[str, ...] = ()  # functions to call (``call=a,b``)
    call_args: str = "{}"  # their arguments, a JSON object
    call_rounds: int = 1  # model responses that call them before answering in text
    handoff: tuple[str, ...] = ()  # teammates to hand the conversation to, if declared
    # Per model (name prefix → time to first token s, tokens/s), before any directive.
    models: tuple[tuple[str, float, float], ...] = ()


GEMINI_CHUNK = (24, 64)  # tokens per streamed chunk, drawn per chunk (2.5 models: 32-64)


def chunk_sizes(cfg: SimConfig, count: int) -> list[int]:
    """How many tokens each event of a ``count``-token reply carries: fixed, or
    Gemini-shaped (varying; the same for replies of the same length, so runs repeat and
    benchmarks compare like with like)."""
    if cfg.chunk_tokens > 0:
        return [cfg.chunk_tokens] * -(-count // cfg.chunk_tokens)
    draw = random.Random(count)
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(draw.randint(*GEMINI_CHUNK))
    return sizes


def for_model(cfg: SimConfig, model: str) -> SimConfig:
    """The pace set for ``model`` (the first matching prefix), else ``cfg``'s."""
    for prefix, ttft_s, tps in cfg.models:
        if model.startswith(prefix):
            return replace(cfg, ttft_s=ttft_s, tokens_per_s=tps)
    return cfg


class _Abort(Exception):
    """Raised inside the SSE body to drop the connection mid-stream (``fail=cut``)."""


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(code: int, status: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message, "status": status}}, code)


def _texts(content: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in content.get("parts", []) if isinstance(p, dict))


def _apply_directive(config: SimConfig, text: str) -> SimConfig:
    match = _DIRECTIVE.search(text)
    if not match:
        return config
    changes: dict[str, Any] = {}
    for item in shlex.split(match.group(1)):
        key, _, value = item.partition("=")
        if key == "ttft_ms":
            changes["ttft_s"] = float(value) / 1000
        elif key == "tps":
            changes["tokens_per_s"] = float(value)
        elif key == "chunk":
            changes["chunk_tokens"] = 0 if value == "gemini" else max(0, int(value))
        elif key == "tokens":
            changes["reply_tokens"] = int(value)
        elif key == "reply":
            changes["reply"] = value
        elif key == "fail":
            changes["fail"] = value
        elif key == "after":
            changes["fail_after"] = int(value)
        elif key == "stamp":
            changes["stamp"] = value not in ("0", "false")
        elif key == "think_tokens":
            changes["think_tokens"] = max(0, int(value))
        elif key == "think_tps":
            changes["think_tps"] = max(0.001, float(value))
        elif key == "call":
            changes["calls"] = tuple(n for n in value.split(",") if n)
        elif key == "args":
            if not isinstance(orjson.loads(value), dict):
                raise ValueError("args must be a JSON object")
            changes["call_args"] = value
        elif key == "rounds":
            changes["call_rounds"] = max(1, int(value))
        elif key == "handoff":
            changes["handoff"] = tuple(n for n in value.split(",") if n)
    return replace(config, **changes)


def _reply_tokens(config: SimConfig, prompt: str) -> list[str]:
    if config.reply is not None:
        return _TOKEN.findall(config.reply)
    said = _DIRECTIVE.sub("", prompt).strip()[:60]
    head = _TOKEN.findall(f"You said: {said}." if said else "Hello.")
    filler = [" " + _FILLER[i % len(_FILLER)] for i in range(max(0, config.reply_tokens))]
    return (head + filler)[: max(config.reply_tokens, 1)]


def _thinking(cfg: SimConfig, body: dict[str, Any]) -> tuple[int, bool]:
    """Tokens the model thinks for this request, and whether it shows a summary."""
    generation = body.get("generationConfig") or {}
    # Proto JSON takes either spelling, like the real API; google-genai sends a nested
    # config dict's keys as given (snake_case).
    config = generation.get("thinkingConfig") or generation.get("thinking_config") or {}
    budget = config.get("thinkingBudget", config.get("thinking_budget", -1))
    if not isinstance(budget, int) or budget == 0:
        return 0, False
    tokens = cfg.think_tokens if budget < 0 else min(budget, cfg.think_tokens)
    return tokens, bool(config.get("includeThoughts", config.get("include_thoughts")))


def _declared(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The function declarations of a request, by name (either JSON spelling)."""
    found: dict[str, dict[str, Any]] = {}
    for tool in body.get("tools") or []:
        for d in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            found[d.get("name", "")] = d
    return found


def _results(content: dict[str, Any]) -> list[dict[str, Any]]:
    """The function responses a content carries."""
    found: list[dict[str, Any]] = []
    for part in content.get("parts") or []:
        if isinstance(part, dict):
            response = part.get("functionResponse") or part.get("function_response")
            if isinstance(response, dict):
                found.append(response)
    return found


def _calls(cfg: SimConfig, body: dict[str, Any], rounds_done: int) -> list[dict[str, Any]]:
    """The function calls this request is answered with (none: answer in text)."""
    declared = _declared(body)
    if cfg.handoff and "handoff" in declared and rounds_done == 0:
        schema = declared["handoff"].get("parametersJsonSchema") or declared["handoff"].get(
            "parameters_json_schema", {}
        )
        allowed = schema.get("properties", {}).get("assistant", {}).get("enum", [])
        target = next((name for name in cfg.handoff if name in allowed), None)
        if target is not None:
            args = {"assistant": target, "reason": "this is more their field"}
            return [{"name": "handoff", "args": args, "id": "handoff-1"}]
    if not cfg.calls or rounds_done >= cfg.call_rounds:
        return []
    args = orjson.loads(cfg.call_args)
    return [
        {"name": name, "args": args, "id": f"call-{rounds_done + 1}-{n}"}
        for n, name in enumerate(cfg.calls)
        if name in declared
    ]


def _summary(prompt: str) -> list[str]:
    said = _DIRECTIVE.sub("", prompt).strip()[:40]
    text = f"**Understanding the request** The user asks: {said}. I will answer it directly."
    words = _TOKEN.findall(text)
    return ["".join(words[i : i + 4]) for i in range(0, len(words), 4)]


def _chunk(
    text: str,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    *,
    thought: bool = False,
) -> bytes:
    part: dict[str, Any] = {"text": text, "thought": True} if thought else {"text": text}
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "simulator"}
    if usage:
        body["usageMetadata"] = usage
    return b"data: " + orjson.dumps(body) + b"\r\n\r\n"


def create_simulator(config: SimConfig | None = None) -> Starlette:
    base = config or SimConfig()
    received: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)

    async def models(request: Request) -> Response:
        model, _, method = request.path_params["rest"].rpartition(":")
        if method in ("embedContent", "batchEmbedContents"):
            return await _embed(request, method)
        if method not in ("streamGenerateContent", "generateContent"):
            return _error(404, "NOT_FOUND", f"method {method!r} is not supported")
        if not request.headers.get("x-goog-api-key"):
            return _error(403, "PERMISSION_DENIED", "API key missing")
        try:
            body = orjson.loads(await request.body())
            contents = body["contents"]
            # The directive is in the user's turn; function results may follow it.
            asked = max(
                (i for i, c in enumerate(contents) if c.get("role") == "user" and _texts(c)),
                default=len(contents) - 1,
            )
            prompt = _texts(contents[asked])
            results = _results(contents[-1]) if len(contents) > asked + 1 else []
            rounds_done = sum(1 for c in contents[asked + 1 :] if _results(c))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return _error(400, "INVALID_ARGUMENT", "request must carry contents")
        received.append({"model": model, "method": method, "body": body, "at": time.time()})
        try:
            cfg = _apply_directive(for_model(base, model.rpartition("/")[2]), prompt)
        except ValueError as exc:
            return _error(400, "INVALID_ARGUMENT", f"bad [[sim]] directive: {exc}")
        if cfg.fail == "429":
            return _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (simulated)")
        if cfg.fail == "500":
            return _error(500, "INTERNAL", "Internal error (simulated)")
        calls = _calls(cfg, body, rounds_done)
        if calls:
            await asyncio.sleep(cfg.ttft_s)
            parts = [{"functionCall": call} for call in calls]
            candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}
            usage = {"promptTokenCount": 1, "candidatesTokenCount": len(calls)}
            answer = {"candidates": [candidate], "usageMetadata": usage}
            if method == "generateContent":
                return _json(answer)
            event = b"data: " + orjson.dumps(answer) + b"\r\n\r\n"
            return StreamingResponse(iter([event]), media_type="text/event-stream")
        if results and cfg.reply is None:
            said = " ".join(
                f"Tool {r.get('name')} returned {orjson.dumps(r.get('response')).decode()}."
                for r in results
            )
            cfg = replace(cfg, reply=said)
        tokens = _reply_tokens(cfg, prompt)
        limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
        finish = "STOP"
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "MAX_TOKENS"
        usage = {
            "promptTokenCount": sum(len(_TOKEN.findall(_texts(c))) for c in contents),
            "candidatesTokenCount": len(tokens),
            "totalTokenCount": 0,
        }
        thinking, summarize = _thinking(cfg, body)
        if thinking:
            usage["thoughtsTokenCount"] = thinking
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        usage["totalTokenCount"] += thinking
        think_s = thinking / cfg.think_tps
        if method == "generateContent":
            await asyncio.sleep(cfg.ttft_s + think_s)
            return _json(orjson.loads(_chunk("".join(tokens), finish, usage)[6:]))
        summary = _summary(prompt) if summarize else []
        return StreamingResponse(
            _stream(cfg, tokens, finish, usage, think_s, summary), media_type="text/event-stream"
        )

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            received.clear()
        return _json(list(received))

    app = Starlette(
        routes=[
            Route("/{version}/models/{rest:path}", models, methods=["POST"]),
            Route("/_sim/requests", requests_log, methods=["GET", "DELETE"]),
        ]
    )
    app.state.received = received
    return app


async def _embed(request: Request, method: str) -> Response:
    """Deterministic stand-in embeddings: hashed words and CJK characters. Not the
    offline embedder's features, so the two give different (comparable) results."""
    try:
        body = orjson.loads(await request.body())
        requests = body["requests"] if method == "batchEmbedContents" else [body]
        texts = [_texts(r["content"]) for r in requests]
        dims = [int(r.get("outputDimensionality") or 768) for r in requests]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return _error(400, "INVALID_ARGUMENT", "embedding request must carry content")
    vectors = [{"values": _sim_vector(t, d)} for t, d in zip(texts, dims, strict=True)]
    if method == "embedContent":
        return _json({"embedding": vectors[0]})
    return _json({"embeddings": vectors})


def _sim_vector(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    lowered = text.lower()
    units = re.findall(r"[a-z0-9]+", lowered) + re.findall(r"[^\x00-\x7f\s]", lowered)
    for unit in units:
        h = zlib.crc32(("sim:" + unit).encode())
        vector[h % dim] += 1.0 if h & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


async def _stream(
    cfg: SimConfig,
    tokens: list[str],
    finish: str,
    usage: dict[str, int],
    think_s: float = 0.0,
    summary: list[str] | None = None,
) -> AsyncIterator[bytes]:
    pieces = summary or []
    for thought in pieces:  # the thought summary, spread over the thinking
        await asyncio.sleep(think_s / len(pieces))
        yield _chunk(thought, thought=True)
    await asyncio.sleep(cfg.ttft_s + (0.0 if pieces else think_s))
    per_token = 1 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
    stop_at = min(cfg.fail_after, len(tokens)) if cfg.fail else len(tokens)
    started = time.monotonic()
    sent = 0
    i = 0
    for size in chunk_sizes(cfg, stop_at):  # they add up to stop_at or just past it
        # Pace against the start time so a slow consumer does not slow the clock: the
        # first chunk leaves at the time to first token, each next one when the tokens
        # before it would have been generated.
        delay = started + i * per_token - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        piece = tokens[i : min(i + size, stop_at)]
        i += size
        sent += len(piece)
        last = cfg.fail is None and sent >= len(tokens)
        text = "".join(piece)
        if cfg.stamp:
            text = f"<t={time.time():.6f}>{text}"
        yield _chunk(text, finish if last else None, usage if last else None)
    if cfg.fail is None:
        if not tokens:
            yield _chunk("", finish, usage)
        return
    if cfg.fail == "cut":
        raise _Abort("simulated connection cut")
    if cfg.fail == "stall":
        await asyncio.sleep(_STALL_S)
    elif cfg.fail in ("safety", "length"):
        yield _chunk("", "SAFETY" if cfg.fail == "safety" else "MAX_TOKENS", usage)
    elif cfg.fail == "error_chunk":
        error = {"error": {"code": 500, "message": "simulated failure", "status": "INTERNAL"}}
        yield b"data: " + orjson.dumps(error) + b"\r\n\r\n"


class LoopbackSimulator:
    """The simulator on 127.0.0.1 (a free port), in a thread with its own event loop.

    The server's built-in simulator: reachable only from this machine, never on the
    server's public port, where its request log would show every user's prompts to
    anyone. The server reaches it through the real google-genai client like any
    Gemini endpoint.
    """

    def __init__(self, config: SimConfig) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(
                create_simulator(config),
                host="127.0.0.1",
                port=0,
                log_config=None,
                log_level="warning",
                lifespan="off",
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="simulator", daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 20.0) -> str:
        """Start serving; return the base URL (blocks until it listens)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the built-in simulator did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def main() -> None:
    """``python -m chat_server.llm.simulator [--port N] [--ttft-ms N] [--tps N]``."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft-ms", type=float, default=300)
    parser.add_argument("--tps", type=float, default=40)
    parser.add_argument("--chunk", type=int, default=0, help="tokens per chunk; 0: Gemini-shaped")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PREFIX:TTFT_MS:TPS",
        help="the pace of models whose name starts with PREFIX (repeat)",
    )
    args = parser.parse_args()
    models = []
    for spec in args.model:
        prefix, ttft_ms, tps = spec.rsplit(":", 2)
        models.append((prefix, float(ttft_ms) / 1000, float(tps)))
    config = SimConfig(
        ttft_s=args.ttft_ms / 1000,
        tokens_per_s=args.tps,
        chunk_tokens=args.chunk,
        models=tuple(models),
    )
    uvicorn.run(create_simulator(config), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
