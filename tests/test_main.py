"""``python -m chat_server`` as ``make run`` starts it: embedded Postgres in DATA_DIR,
migrations, the simulator notice, and history that survives a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_server.storage import embedded
from protocol.messages import Ack, History, HistoryPage, Send, TurnEnd
from tests.servers import free_port
from tests.wsclient import Client


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "GEMINI_API_KEY", "GEMINI_BASE_URL", "JWT_SECRET")
    }
    env |= {"DATA_DIR": str(data_dir), "PORT": str(port), "SIM_TTFT_MS": "0"}
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
    assert "Application shutdown complete" in log.read_text()


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
