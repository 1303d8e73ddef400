"""``python -m chat_server`` as ``make run`` starts it: embedded Postgres in DATA_DIR,
migrations, the simulator notice, and history that survives a restart; the other
commands; and bad settings, each one line naming the variable, exit 2, no traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from chat_server.auth import Authenticator
from chat_server.config import Secret
from chat_server.storage import embedded
from protocol.messages import Ack, History, HistoryPage, Send, TurnEnd
from tests.servers import free_port
from tests.test_deploy import variables_read
from tests.wsclient import Client

SECRET = "0123456789abcdef0123456789abcdef"


def clean_env(**changes: str) -> dict[str, str]:
    """This process's environment without any of the server's settings, plus ``changes``."""
    read = variables_read()
    return {k: v for k, v in os.environ.items() if k not in read} | changes


def cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_server", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = clean_env(DATA_DIR=str(data_dir), PORT=str(port), SIM_TTFT_MS="0")
    env["SIM_TOKENS_PER_S"] = "500"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat_server"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"server did not come up:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal it handled once shutdown is complete.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert log.read_text().rstrip().endswith("chat_server: stopped")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    # The embedded Postgres outlives the server by design (the next start reuses it).
    embedded.stop(tmp_path / "data" / "pg")


@pytest.mark.asyncio
async def test_run_uses_embedded_postgres_and_history_survives_a_restart(
    data_dir: Path, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "server.log"
    process = start(data_dir, port, log)
    try:
        client = await Client.connect(f"ws://127.0.0.1:{port}/ws")
        await client.hello("restart-user")
        cid = await client.create()
        await client.send(Send(id="r1", conversation_id=cid, text="keep me"))
        await client.expect(Ack)
        end, _ = await client.until(TurnEnd)
        await client.close()
    finally:
        stop(process, log)
    output = log.read_text()
    assert "replies come from the built-in Gemini simulator" in output
    assert "JWT_SECRET is not set" in output
    # What the start did, in a few lines, the last one the URL to open.
    assert f"starting the embedded Postgres in {data_dir / 'pg'}" in output
    assert "migrating the database" in output
    assert f"serving: open http://127.0.0.1:{port}/ (WebSocket ws://127.0.0.1:{port}/ws)" in output
    for chatter in ("uvicorn", "google_genai", "httpx"):
        assert chatter not in output
    assert (data_dir / "pg" / "PG_VERSION").exists()

    process = start(data_dir, port, log)
    try:
        client = await Client.connect(f"ws://127.0.0.1:{port}/ws")
        await client.hello("restart-user")
        await client.send(History(id="h", conversation_id=cid))
        page = await client.expect(HistoryPage)
        assert [(m.seq, m.text) for m in page.messages] == [(1, "keep me"), (2, end.message.text)]
        await client.close()
    finally:
        stop(process, log)


def test_help_and_a_bad_command_start_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shown = cli("--help", DATA_DIR=str(data_dir))
    assert shown.returncode == 0, shown.stderr
    for command in ("serve", "migrate", "stop-db", "token", "check-config"):
        assert command in shown.stdout
    bad = cli("serv", DATA_DIR=str(data_dir))
    assert bad.returncode == 2
    assert "invalid choice: 'serv'" in bad.stderr
    assert not data_dir.exists(), "nothing may start Postgres in DATA_DIR"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PORT": "99999"}, "PORT='99999': must be an integer from 0 to 65535"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud': must be one of debug, info, warning, error"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml': must be one of text, json"),
        ({"DATABASE_URL": "mysql://chat:hunter2@db/chat"}, "DATABASE_URL='mysql://chat:***@db"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL='http://cache:6379': must be a redis://"),
        ({"ALLOWED_ORIGINS": "app.example"}, "ALLOWED_ORIGINS='app.example': must be a comma"),
        ({"JWT_SECRET": "hunter2"}, "JWT_SECRET='********': must be at least 32 bytes"),
    ],
)
def test_each_bad_setting_is_one_line_naming_it(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    line = one_line_error(cli(DATA_DIR=str(tmp_path / "data"), **env))
    assert expected in line
    assert "hunter2" not in line
    assert not (tmp_path / "data").exists()


def test_unreachable_postgres_names_the_variable_and_host(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://chat:hunter2@127.0.0.1:{port}/chat"
    line = one_line_error(cli(DATABASE_URL=url, STARTUP_WAIT_S="1"))
    assert line.startswith(f"error: DATABASE_URL: cannot reach Postgres at 127.0.0.1:{port}")
    assert "within 1 s" in line
    assert "hunter2" not in line


def test_unreachable_redis_names_the_variable_and_host(database_url: str) -> None:
    port = free_port()
    result = cli(
        DATABASE_URL=database_url,
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        PORT="0",
        STARTUP_WAIT_S="1",
    )
    line = one_line_error(result)
    assert line.startswith(f"error: REDIS_URL: cannot reach Redis at 127.0.0.1:{port} within")


def test_a_port_in_use_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(cli(PORT=str(port), DATA_DIR=str(tmp_path / "data")))
    assert line == (
        f"error: PORT={port}: cannot listen on 127.0.0.1:{port} (address already in use); "
        "set PORT or HOST"
    )
    assert not (tmp_path / "data").exists()


def test_token_mints_a_jwt_the_server_accepts() -> None:
    result = cli("token", "alice", "--ttl", "2h", JWT_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 7200
    assert Authenticator(Secret(SECRET)).subject(token) == "alice"


def test_token_without_a_secret_or_with_a_bad_ttl_is_one_line() -> None:
    assert "JWT_SECRET is not set" in one_line_error(cli("token", "alice"))
    assert "--ttl='soon'" in one_line_error(
        cli("token", "alice", "--ttl", "soon", JWT_SECRET=SECRET)
    )


def test_check_config_reaches_postgres_and_redis(database_url: str, redis_server: Any) -> None:
    ok = cli("check-config", DATABASE_URL=database_url, REDIS_URL=redis_server.url, PORT="0")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "configuration OK"
    port = free_port()
    bad = cli(
        "check-config",
        DATABASE_URL=f"postgresql://u:hunter2@127.0.0.1:{port}/x",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        STARTUP_WAIT_S="0",
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["DATABASE_URL", "REDIS_URL"], lines
    assert "hunter2" not in bad.stderr
    assert "Traceback" not in bad.stderr
