"""``python -m load.faults`` (``make faults``): what a deployment loses when a part fails.

Three replicas (``LEASE_MS=1000``) share one redis-server and one Postgres (pgserver in
a temporary folder) and talk to the standalone simulator; all on loopback, every wait
bounded. Each row streams long replies (generated on the replica a fault hits, where it
hits one; watched from another replica), injects the fault, and waits for every reply
to end. Then it reads what was stored through the REST API and prints:

- ``lost``: acknowledged turns that are not stored (must be 0);
- ``short``: replies whose stored text lacks a character a device was shown at its
  offset (must be 0);
- ``streaming``: replies still ``streaming`` once everything settled (must be 0);
- ``no_end``: watched replies whose device never got a ``turn_end`` (must be 0);
- in the storm row, clients that never joined after five jittered tries (must be 0),
  and why tries failed;
- ``recover_s``: from the moment the part is back (or killed, for a replica) until
  every replica is ready and a new turn completes end to end.

Exit status 1 if any row breaks a must. Only commands and the wire protocol are used:
nothing of the server is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from load.client import ProtocolClient, failure, join, open_session
from load.spawn import EmbeddedRedis, _free_port, _wait_http
from protocol.messages import (
    Ack,
    ConversationCreate,
    Delta,
    Join,
    Send,
    TurnEnd,
)

LONG = "[[sim ttft_ms=100 tps=40 tokens=200]]"  # ~5 s of streaming
SHORT = "[[sim ttft_ms=0 tps=500 tokens=5]]"
ROW_DEADLINE_S = 90.0


class Deployment:
    """Replicas, Redis, Postgres and the simulator as processes this harness controls."""

    def __init__(self, tmp: Path, replicas: int) -> None:
        # platformdirs (inside pgserver) warns unless XDG_RUNTIME_DIR is a private folder.
        runtime = tmp / "run"
        runtime.mkdir(mode=0o700)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        import pgserver

        self.tmp = tmp
        self.pgdata = tmp / "pg"
        self._pg = pgserver.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode="stop"
        )
        self.database_url = str(self._pg.get_uri())
        self.redis = EmbeddedRedis()
        sim_port = _free_port()
        self.sim = subprocess.Popen(
            [sys.executable, "-m", "chat_server.llm.simulator", "--port", str(sim_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "JWT_"))}
        self.env |= {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "GEMINI_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "GEMINI_ATTEMPTS": "1",
            "LEASE_MS": "1000",
            "DRAIN_TIMEOUT_S": "30",
            "LOG_LEVEL": "warning",
            "STARTUP_WAIT_S": "30",
        }
        self.ports = [_free_port() for _ in range(replicas)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * replicas
        for i in range(replicas):
            self.start(i)

    def start(self, i: int) -> None:
        log = self.tmp / f"replica-{i}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "chat_server"],
                env=self.env | {"PORT": str(self.ports[i]), "NODE_ID": f"replica-{i}"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes[i] = process
        _wait_http(f"http://127.0.0.1:{self.ports[i]}/ready", process, log)

    def ws(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}/ws"

    def http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def signal(self, i: int, sig: int) -> None:
        process = self.processes[i]
        assert process is not None
        process.send_signal(sig)

    def wait_exit(self, i: int, timeout_s: float) -> None:
        process = self.processes[i]
        assert process is not None
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.processes[i] = None

    def stop_postgres(self) -> None:
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # fast shutdown: roll back, then exit
        deadline = time.monotonic() + 30
        while (self.pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_postgres(self) -> None:
        self._pg.ensure_postgres_running()

    def redis_pid(self) -> int:
        return int(self.redis.server.pid)

    def close(self) -> None:
        for i, process in enumerate(self.processes):
            if process is not None:
                process.send_signal(signal.SIGINT)
                self.wait_exit(i, 20)
        self.sim.terminate()
        self.sim.wait(timeout=10)
        self.redis.stop()
        self._pg.cleanup()

    def ready(self) -> bool:
        for i, process in enumerate(self.processes):
            if process is None:
                continue
            try:
                if httpx.get(f"{self.http(i)}/ready", timeout=1).status_code != 200:
                    return False
            except httpx.TransportError:
                return False
        return True

    def live(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p is not None]


@dataclass
class Conversation:
    user: str
    cid: uuid.UUID
    acked: set[str] = field(default_factory=set)
    shown: list[Delta] = field(default_factory=list)
    ended: bool = False


@dataclass
class Row:
    name: str
    lost: int = 0
    short: int = 0
    streaming: int = 0
    no_end: int = 0
    recover_s: float = 0.0
    never_joined: int = 0  # storm clients that did not get in after their retries
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == self.short == self.streaming == self.no_end == self.never_joined == 0


async def watch(client: ProtocolClient, conversation: Conversation) -> None:
    """Collect the deltas a device is shown until its turn_end (or its socket dies)."""
    with contextlib.suppress(Exception):
        while True:
            frame = await client.recv(timeout=ROW_DEADLINE_S)
            if isinstance(frame, Delta):
                conversation.shown.append(frame)
            elif isinstance(frame, TurnEnd):
                conversation.ended = True
                return


async def sender_reads(client: ProtocolClient, conversation: Conversation) -> None:
    """The sender's own view: its acks, and the deltas it is shown, until turn_end."""
    with contextlib.suppress(Exception):
        while True:
            frame = await client.recv(timeout=ROW_DEADLINE_S)
            if isinstance(frame, Ack):
                conversation.acked.add(frame.id)
            elif isinstance(frame, Delta):
                conversation.shown.append(frame)
            elif isinstance(frame, TurnEnd):
                return


async def streaming_replies(
    d: Deployment, count: int, generate_on: Callable[[int], int]
) -> tuple[list[Conversation], list[asyncio.Task[None]], list[ProtocolClient]]:
    """``count`` conversations, each with a long reply generated on ``generate_on(n)``
    and watched from the next replica; returns once every watcher saw a delta."""
    conversations, tasks, clients = [], [], []
    for n in range(count):
        user = f"faults-{uuid.uuid4().hex[:12]}"
        gen = generate_on(n)
        sender = await open_session(d.ws(gen), user)
        joined = await join(sender, Join(create=ConversationCreate(title="fault")))
        watcher = await open_session(d.ws((gen + 1) % len(d.ports)), user)
        await join(watcher, Join(conversation_id=joined.conversation.id))
        conversation = Conversation(user, joined.conversation.id)
        await sender.send(Send(id=f"turn-{n}", conversation_id=conversation.cid, text=LONG))
        tasks += [
            asyncio.create_task(sender_reads(sender, conversation)),
            asyncio.create_task(watch(watcher, conversation)),
        ]
        conversations.append(conversation)
        clients += [sender, watcher]
    for _ in range(600):  # at most 30 s
        if all(c.shown for c in conversations):
            break
        await asyncio.sleep(0.05)
    return conversations, tasks, clients


async def probe(d: Deployment) -> None:
    """One short turn end to end on each live replica (raises if any fails)."""
    for i in d.live():
        client = await open_session(d.ws(i), f"probe-{uuid.uuid4().hex[:12]}")
        try:
            joined = await join(client, Join(create=ConversationCreate(title="probe")))
            await client.send(Send(id="p", conversation_id=joined.conversation.id, text=SHORT))
            async with asyncio.timeout(10):
                while not isinstance(await client.recv(), TurnEnd):
                    pass
        finally:
            await client.close()


async def recovery_time(d: Deployment, since: float) -> float:
    deadline = time.monotonic() + ROW_DEADLINE_S
    while True:
        try:
            if await asyncio.to_thread(d.ready):
                await probe(d)
                return time.monotonic() - since
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def settle_and_count(d: Deployment, row: Row, conversations: list[Conversation]) -> None:
    """Read what was stored (REST, on a live replica) once nothing is streaming."""
    base = d.http(d.live()[0])
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", timeout=10) as http:
        for c in conversations:
            headers = {"Authorization": f"Bearer {c.user}"}
            while True:
                page = (await http.get(f"/conversations/{c.cid}/messages", headers=headers)).json()
                messages = page["messages"]
                streaming = [m for m in messages if m["status"] == "streaming"]
                if not streaming or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            row.streaming += len(streaming)
            stored_ids = {m.get("client_id") for m in messages if m["role"] == "user"}
            row.lost += len(c.acked - stored_ids)
            reply = next((m["text"] for m in messages if m["role"] == "assistant"), "")
            if any(reply[x.offset : x.offset + len(x.text)] != x.text for x in c.shown):
                row.short += 1
            row.no_end += not c.ended


async def run_row(
    d: Deployment,
    name: str,
    count: int,
    generate_on: Callable[[int], int],
    fault: Callable[[], Awaitable[float]],
) -> Row:
    """Stream, inject ``fault`` (it returns when the part is back), count."""
    row = Row(name)
    conversations, tasks, clients = await streaming_replies(d, count, generate_on)
    back_at = await fault()
    row.recover_s = await recovery_time(d, back_at)
    await asyncio.wait(tasks, timeout=ROW_DEADLINE_S)
    for task in tasks:
        task.cancel()
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()
    await settle_and_count(d, row, conversations)
    return row


async def main_async(replicas: int, replies: int, storm: int) -> list[Row]:
    rows = []
    last = replicas - 1
    with tempfile.TemporaryDirectory(prefix="chat-faults-") as tmp:
        d = await asyncio.to_thread(Deployment, Path(tmp), replicas)
        storm_note: list[str] = []
        storm_failed: list[int] = []

        async def kill_replica() -> float:
            d.signal(last, signal.SIGKILL)
            d.wait_exit(last, 5)
            killed = time.monotonic()
            await asyncio.sleep(3)  # leases lapse, sweepers end its replies
            await asyncio.to_thread(d.start, last)
            return killed

        async def restart_redis() -> float:
            d.redis.stop()  # no persistence: it comes back empty
            await asyncio.sleep(0.5)
            await asyncio.to_thread(d.redis.start)
            return time.monotonic()

        async def pause_redis() -> float:
            os.kill(d.redis_pid(), signal.SIGSTOP)
            await asyncio.sleep(10)
            os.kill(d.redis_pid(), signal.SIGCONT)
            return time.monotonic()

        async def restart_postgres() -> float:
            await asyncio.to_thread(d.stop_postgres)
            await asyncio.sleep(3)
            await asyncio.to_thread(d.start_postgres)
            return time.monotonic()

        async def reconnect_storm() -> float:
            started = time.monotonic()
            failed, why = await storm_of(d, storm)
            took = time.monotonic() - started
            retried = ", ".join(f"{code} x{count}" for code, count in why.most_common())
            storm_note.append(
                f"{storm - failed}/{storm} joined in {took:.1f} s"
                + (f" (tries that failed: {retried})" if why else "")
            )
            storm_failed.append(failed)
            return time.monotonic()

        async def drain_replica() -> float:
            d.signal(0, signal.SIGTERM)
            await asyncio.to_thread(d.wait_exit, 0, 60)
            stopped = time.monotonic()
            await asyncio.to_thread(d.start, 0)
            return stopped

        def spread(n: int) -> int:
            return n % replicas

        plan: list[tuple[str, Callable[[int], int], Callable[[], Awaitable[float]]]] = [
            ("kill -9 a replica", lambda n: last, kill_replica),
            ("restart Redis", spread, restart_redis),
            ("SIGSTOP Redis 10 s", spread, pause_redis),
            ("restart Postgres (3 s down)", spread, restart_postgres),
            (f"reconnect storm ({storm} clients)", spread, reconnect_storm),
            ("SIGTERM drain a replica", lambda n: 0, drain_replica),
        ]
        try:
            for name, generate_on, fault in plan:
                print(f"{name} ...", flush=True)
                rows.append(await run_row(d, name, replies, generate_on, fault))
            rows[4].note = storm_note[0] if storm_note else ""
            rows[4].never_joined = storm_failed[0] if storm_failed else storm
        finally:
            await asyncio.to_thread(d.close)
    return rows


async def storm_of(d: Deployment, clients: int) -> tuple[int, collections.Counter[str]]:
    """``clients`` devices connect at once across the replicas, say hello and join a
    conversation of their own user, retrying as a client library would (jittered
    back-off, up to 5 tries); returns how many never joined, and why tries failed."""
    why: collections.Counter[str] = collections.Counter()

    async def one(n: int) -> bool:
        for attempt in range(5):
            try:
                client = await open_session(d.ws(n % len(d.ports)), f"storm-{n}", open_timeout=30)
                try:
                    await join(client, Join(create=ConversationCreate(title="storm")))
                finally:
                    await client.close()
                return True
            except Exception as exc:
                why[failure(exc)] += 1
                await asyncio.sleep(random.uniform(0.5, 1.0) * 2**attempt)
        return False

    results = await asyncio.gather(*(one(n) for n in range(clients)))
    return results.count(False), why


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.faults", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--replies", type=int, default=12, help="long replies per row")
    parser.add_argument("--storm", type=int, default=1000, help="clients in the storm")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = asyncio.run(main_async(args.replicas, args.replies, args.storm))
    print(f"\n{'fault':<32}{'lost':>6}{'short':>7}{'streaming':>11}{'no_end':>8}{'recover_s':>11}")
    for row in rows:
        print(
            f"{row.name:<32}{row.lost:>6}{row.short:>7}{row.streaming:>11}{row.no_end:>8}"
            f"{row.recover_s:>11.1f}  {'ok' if row.ok else 'FAILED'} {row.note}"
        )
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
