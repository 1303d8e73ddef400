"""The TypeScript client (clients/js): its types are generated from protocol/schema.json
and fresh, its committed build matches its source, and its Node tests pass against real
servers: two replicas sharing Redis and Postgres, and one that requires signed tokens."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_server.config import Secret
from tests.replicas import Replica
from tests.servers import RunningServer, serve

JS = Path(__file__).resolve().parents[1] / "clients" / "js"


def _run(*command: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        command, cwd=JS, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def node_modules() -> None:
    if not (JS / "node_modules" / ".bin" / "tsc").exists():
        _run("npm", "ci", "--no-audit", "--no-fund")


def test_types_are_generated_from_the_schema_and_fresh() -> None:
    _run("node", "scripts/gen-types.mjs", "--check")


def test_the_committed_build_matches_the_source(node_modules: None, tmp_path: Path) -> None:
    _run("npx", "tsc", "-p", "tsconfig.json", "--outDir", str(tmp_path))
    for built in sorted(tmp_path.iterdir()):
        committed = JS / "dist" / built.name
        assert committed.exists(), f"dist/{built.name} is missing: run npm run build"
        assert committed.read_text() == built.read_text(), f"dist/{built.name} is stale"


def test_node_tests_pass_against_real_servers(
    replicas: Callable[..., list[Replica]], start_server: Callable[..., RunningServer]
) -> None:
    assert shutil.which("node"), "Node.js is needed for the TypeScript client's tests"

    async def echo(request: Request) -> Response:  # the user's backend, for tool calls
        return Response(orjson.dumps({"echo": orjson.loads(await request.body())["arguments"]}))

    backend = serve(Starlette(routes=[Route("/hooks/echo", echo, methods=["POST"])]))
    try:
        a, b = replicas(2, TOOL_URL_ALLOWLIST=f"{backend.http}/hooks/")
        jwt = start_server(jwt_secret=Secret("s" * 32))
        env = os.environ | {
            "CHAT_WS_A": a.ws,
            "CHAT_WS_B": b.ws,
            "CHAT_PID_A": str(a.process.pid),
            "CHAT_WS_JWT": jwt.ws,
            "CHAT_TOOL_URL": f"{backend.http}/hooks/echo",
        }
        out = _run("node", "--experimental-websocket", "--test", "test/", env=env, timeout=240)
        assert "# fail 0" in out, out
    finally:
        backend.stop()
