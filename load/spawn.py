"""Start a throwaway server (embedded Postgres in a temp folder) and a standalone
Gemini simulator as subprocesses, for runs that need no deployment. Only commands are
run here: nothing of the server is imported."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Spawned:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


@contextlib.contextmanager
def spawned_server(**env: str) -> Iterator[Spawned]:
    with tempfile.TemporaryDirectory(prefix="chat-load-") as tmp:
        sim_port, port = _free_port(), _free_port()
        sim_log, log = Path(tmp, "sim.log"), Path(tmp, "server.log")
        with sim_log.open("wb") as out:
            sim = subprocess.Popen(
                [sys.executable, "-m", "chat_server.llm.simulator", "--port", str(sim_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        server_env |= {
            "DATA_DIR": tmp,
            "PORT": str(port),
            "GEMINI_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "GEMINI_ATTEMPTS": "1",
            "LOG_LEVEL": "warning",
        } | env
        with log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "chat_server"],
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/ready", server, log)
            yield Spawned(port, server)
        finally:
            for process in (server, sim):
                process.send_signal(signal.SIGINT)
            for process in (server, sim):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            subprocess.run(
                [sys.executable, "-m", "chat_server", "stop-db"], env=server_env, check=False
            )
