"""Tools an assistant can call: webhooks of the user's own backend, and the built-in
handoff to a teammate.

- ``allowed``: a webhook URL must fall under the ``TOOL_URL_ALLOWLIST`` setting (no
  requests to arbitrary hosts from inside the deployment: SSRF), checked when a tool is
  saved and again before every call.
- ``Webhooks.call``: one call, as a signed POST (HMAC-SHA256 of ``timestamp.body`` with
  the tool's secret, like Stripe's and Slack's webhooks, so the backend can check who
  sent it and when). Arguments are checked against the tool's JSON Schema first. A
  timeout, retries for idempotent tools, and a cap on the result's size. It never
  raises (except when cancelled): every failure is an ``Outcome`` the model reads.
- ``handoff_declaration``: the built-in ``handoff`` function, its teammates as an enum.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import orjson

from chat_server.llm import FunctionCall, ToolDeclaration

log = logging.getLogger(__name__)

HANDOFF = "handoff"  # the built-in tool's name; no webhook may take it
SIGNATURE_HEADER = "X-Chat-Signature"  # "t=<unix seconds>,v1=<hex HMAC-SHA256>"
RETRY_DELAYS_S = (0.2, 0.5, 1.0)  # between attempts of an idempotent tool


@dataclass(frozen=True, slots=True)
class Tool:
    """A webhook tool, as the generation needs it."""

    id: uuid.UUID
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    secret: str
    timeout_ms: int
    idempotent: bool
    max_result_bytes: int

    @classmethod
    def of(cls, row: Any) -> Tool:
        """From its stored row (``storage.models.Tool``)."""
        return cls(
            row.id,
            row.name,
            row.description,
            row.parameters,
            row.url,
            row.secret,
            row.timeout_ms,
            row.idempotent,
            row.max_result_bytes,
        )

    def declaration(self) -> ToolDeclaration:
        return ToolDeclaration(self.name, self.description, self.parameters)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call came to: a result, or an error (``code``, ``message``) the model sees."""

    ok: bool
    result: Any = None
    code: str | None = None
    message: str | None = None

    def response(self) -> dict[str, Any]:
        """The function response for the model (Gemini expects an object)."""
        if self.ok:
            return {"result": self.result}
        return {"error": {"code": self.code, "message": self.message}}


def failed(code: str, message: str) -> Outcome:
    return Outcome(False, code=code, message=message)


def parse_allowlist(setting: str) -> tuple[str, ...]:
    """``TOOL_URL_ALLOWLIST``: comma-separated URL prefixes (``https://api.example.com/``)."""
    return tuple(p.strip() for p in setting.split(",") if p.strip())


def _parts(url: str) -> tuple[str, str, int, str] | None:
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    if parsed.username is not None or parsed.password is not None:
        return None  # "https://allowed.example@evil.example/" must not pass
    default = 443 if parsed.scheme == "https" else 80
    return parsed.scheme, parsed.hostname.lower(), port or default, parsed.path or "/"


def allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """True if ``url`` is http(s), without credentials, on the same scheme, host and port
    as an allowlist entry and under its path. Nothing is allowed by an empty list."""
    target = _parts(url)
    if target is None:
        return False
    for prefix in allowlist:
        entry = _parts(prefix)
        if entry is not None and target[:3] == entry[:3] and target[3].startswith(entry[3]):
            return True
    return False


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` cannot describe a tool's arguments (None: it can)."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    if schema.get("type") != "object":
        return 'the arguments schema must have "type": "object"'
    return None


def handoff_declaration(teammates: list[str]) -> ToolDeclaration:
    return ToolDeclaration(
        HANDOFF,
        "Hand this conversation to a teammate who fits the request better. Your reply "
        "ends and the teammate answers the user's last message.",
        {
            "type": "object",
            "properties": {
                "assistant": {"type": "string", "enum": teammates},
                "reason": {"type": "string", "description": "why they fit better"},
            },
            "required": ["assistant", "reason"],
        },
    )


class Webhooks:
    def __init__(self, allowlist: tuple[str, ...], client: httpx.AsyncClient | None = None):
        self.allowlist = allowlist
        # No redirects: a redirect could lead anywhere, past the allowlist.
        self._client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, tool: Tool, call: FunctionCall, context: dict[str, str]) -> Outcome:
        """Run one tool call; every failure is an ``Outcome``, never an exception."""
        try:
            jsonschema.validate(call.args, tool.parameters)
        except jsonschema.ValidationError as exc:
            return failed("tool_bad_arguments", f"arguments do not match the schema: {exc.message}")
        except jsonschema.SchemaError:
            return failed("tool_bad_arguments", "the tool's schema is not valid")
        if not allowed(tool.url, self.allowlist):
            return failed("tool_not_allowed", f"{tool.url} is not in TOOL_URL_ALLOWLIST")
        body = orjson.dumps(
            {"call_id": call.id, "tool": tool.name, "arguments": call.args, **context}
        )
        deadline = time.monotonic() + tool.timeout_ms / 1000
        attempts = 1 + (len(RETRY_DELAYS_S) if tool.idempotent else 0)
        for attempt in range(attempts):
            outcome, retry = await self._attempt(tool, call, body, deadline - time.monotonic())
            pause = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            if not retry or attempt == attempts - 1 or time.monotonic() + pause >= deadline:
                return outcome  # the last failure, when no time is left for another try
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _attempt(
        self, tool: Tool, call: FunctionCall, body: bytes, timeout_s: float
    ) -> tuple[Outcome, bool]:
        """One POST: its outcome, and whether another attempt may help."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(tool.secret, int(time.time()), body),
            "X-Chat-Tool-Call": call.id,  # the same on a retry: an idempotency key
        }
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client.stream(
                    "POST", tool.url, content=body, headers=headers
                ) as response:
                    data = await _read_capped(response, tool.max_result_bytes)
        except TimeoutError:
            return failed("tool_timeout", f"no answer within {tool.timeout_ms} ms"), False
        except _TooLarge:
            limit = tool.max_result_bytes
            return failed("tool_result_too_large", f"the result is over {limit} bytes"), False
        except httpx.HTTPError as exc:
            return failed("tool_failed", f"the tool's backend could not be reached: {exc!r}"), True
        status = response.status_code
        if status >= 500 or status == 429:
            return failed("tool_failed", f"the tool's backend answered {status}"), True
        if status >= 300:
            detail = data[:200].decode(errors="replace")
            return failed("tool_rejected", f"the tool's backend answered {status}: {detail}"), False
        try:
            result = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            result = data.decode(errors="replace")
        return Outcome(True, result=result), False


class _TooLarge(Exception):
    pass


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (a larger one is refused)."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise _TooLarge
    return bytes(data)
