"""REST plumbing: error bodies, body and query validation, the caller, and one table of
endpoints that makes both the routes and the OpenAPI document, so the two cannot drift.

The domain's ``ChatError`` becomes an HTTP status here, once (``errors.HTTP_STATUS``);
the REST layer's own faults (a body that is not JSON or not valid) are ``ApiError``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import orjson
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_server.errors import HTTP_STATUS, ChatError
from chat_server.runtime import Runtime
from chat_server.wire import retry_after_header
from protocol.errors import ErrorCode

PREFIX = "/api/v1"
T = TypeVar("T")
R = TypeVar("R")


class ErrorOut(msgspec.Struct, kw_only=True):
    error: str  # validation_error | bad_json | unauthorized | not_found
    message: str
    field: str | None = None  # for validation errors: which field, as a dotted path


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, ErrorOut(error=error, message=message, field=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def respond(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(msgspec.to_builtins(value)), status, media_type="application/json")


_FIELD = re.compile(r"at `\$\.?([^`]*)`")


def _integral(value: Any) -> Any:
    """Floats with no fraction as ints, all the way down (402.0 → 402)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def decode_body(kind: type[T], raw: bytes) -> T:
    try:
        try:
            return msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as exc:
            if "got `float`" not in str(exc):
                raise
            # JSON Schema's "integer" includes 402.0, and the OpenAPI document promises
            # JSON Schema; msgspec wants 402. The slow path, only for such bodies.
            return msgspec.convert(_integral(msgspec.json.decode(raw)), kind)
    except msgspec.ValidationError as exc:
        found = _FIELD.search(str(exc))
        field = found.group(1).replace("[", ".").replace("]", "") if found else None
        raise ApiError(422, "validation_error", str(exc), field or None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None


def apply_patch(row: Any, patch: msgspec.Struct) -> None:
    """Set on ``row`` every field the PATCH body gave (the others are UNSET)."""
    for name in patch.__struct_fields__:
        value = getattr(patch, name)
        if value is not msgspec.UNSET:
            setattr(row, name, value)


def path_id(c: Caller, what: str) -> uuid.UUID:
    """The ``{what}_id`` path parameter; not an id at all is 404 (no such row either)."""
    try:
        return uuid.UUID(c.request.path_params[f"{what}_id"])
    except ValueError:
        raise not_found(what) from None


@dataclass(frozen=True)
class Query:
    """A query parameter: the handler reads it and the OpenAPI document describes it
    from this one definition."""

    name: str
    description: str
    low: int | None = None  # an integer in low..high; None: an opaque string
    high: int | None = None
    default: int | None = None

    def schema(self) -> dict[str, Any]:
        if self.low is None:
            return {"type": "string"}
        schema = {"type": "integer", "minimum": self.low, "maximum": self.high}
        return schema | ({"default": self.default} if self.default is not None else {})

    def integer(self, request: Request) -> int | None:
        raw = request.query_params.get(self.name)
        if raw is None:
            return self.default
        low, high = self.low or 0, self.high or 0
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            message = f"{self.name} must be an integer in {low}..{high}"
            raise ApiError(422, "validation_error", message, self.name)
        return value


@dataclass(frozen=True)
class Caller:
    runtime: Runtime
    user_id: uuid.UUID
    request: Request

    def db(self) -> Any:
        return self.runtime.db.begin()


async def caller(request: Request) -> Caller:
    runtime: Runtime = request.app.state.runtime
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    subject = runtime.auth.subject(token)  # ChatError(unauthorized): 401
    per_minute = runtime.settings.requests_per_minute
    wait_ms = await runtime.limiter.take(f"rest:{subject}", per_minute / 60, per_minute)
    if wait_ms:  # 429 with Retry-After
        runtime.metrics.limit_hit("requests")
        message = f"more than {per_minute} requests a minute; try again in {wait_ms} ms"
        raise ChatError(ErrorCode.RATE_LIMITED, message, retry_after_ms=wait_ms)
    return Caller(runtime, await runtime.users.resolve(subject), request)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Caller], Awaitable[Response]]
    summary: str
    body: type | None = None
    response: Any = None  # a type, list[type], or None for 204
    status: int = 200
    query: tuple[Query, ...] = ()
    # 404 for ids in the body too (not only in the path): an assistant, conversation...
    body_ids: bool = False
    # Changes what the router calibrates a team on (skills, examples, assistants): the
    # cached calibration is dropped once the change is committed.
    changes_team: bool = False


def _endpoint(handlers: dict[str, Endpoint]) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = handlers[request.method]
        try:
            c = await caller(request)
            response = await endpoint.handler(c)
            if endpoint.changes_team:
                c.runtime.turns.matcher.invalidate(c.user_id)
            return response
        except ApiError as exc:
            return respond(exc.body, exc.status)
        except ChatError as exc:  # the domain's errors, mapped once (chat_server.errors)
            response = respond(
                ErrorOut(error=exc.code.value, message=exc.message), HTTP_STATUS[exc.code]
            )
            if exc.retry_after_ms:
                response.headers["Retry-After"] = retry_after_header(exc.retry_after_ms)
            return response

    return serve


def routes(endpoints: list[Endpoint]) -> list[Route]:
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    built = [
        Route(PREFIX + path, _endpoint(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]
    document = orjson.dumps(openapi(endpoints))

    async def serve_openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    built.append(Route(PREFIX + "/openapi.json", serve_openapi, methods=["GET"]))
    return built


def openapi(endpoints: list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from the endpoints and their msgspec types."""
    types: list[Any] = [ErrorOut]
    for e in endpoints:
        types += [t for t in (e.body, e.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(repr, types), schemas, strict=True))
    error = {"content": {"application/json": {"schema": schema_of[repr(ErrorOut)]}}}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path_ids = re.findall(r"{(\w+)}", e.path)
        responses: dict[str, Any] = {
            "401": {"description": "missing or invalid bearer token", **error},
            "429": {
                "description": "over REQUESTS_PER_MINUTE; retry after the Retry-After seconds",
                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                **error,
            },
        }
        if e.body is not None:
            responses["400"] = {"description": "the body is not JSON", **error}
        if path_ids or e.body_ids:
            responses["404"] = {"description": "unknown id, or another user's", **error}
        if e.body is not None or e.query:
            invalid = "invalid body or query" if e.body and e.query else "invalid body"
            responses["422"] = {
                "description": invalid if e.body else "invalid query parameter",
                **error,
            }
        operation: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__,
            "parameters": [
                {
                    "name": p,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "an id (uuid); anything else is 404",
                }
                for p in path_ids
            ]
            + [
                {"name": q.name, "in": "query", "description": q.description, "schema": q.schema()}
                for q in e.query
            ],
            "responses": responses,
        }
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[repr(e.body)]}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if e.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[repr(e.response)]}}
        operation["responses"][str(e.status)] = ok
        paths.setdefault(PREFIX + e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "chat-server REST API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


async def owned_row(
    s: AsyncSession,
    c: Caller,
    what: str,
    lookup: Callable[[AsyncSession, uuid.UUID, uuid.UUID], Awaitable[R | None]],
) -> R:
    """The caller's row named by the ``{what}_id`` path parameter; else 404."""
    row = await lookup(s, c.user_id, path_id(c, what))
    if row is None:
        raise not_found(what)
    return row
