"""What metrics and limits cost: this server with them (the defaults) against the same
server with ``METRICS=off LIMITS=off``, both running at once, the same workload sent to
one then the other, round after round, so drift on a shared machine falls on both.

- Fan-out: one process each streaming one reply to many subscribers: server CPU per
  delivery. Metrics count every frame sent; no limit is on this path.
- Per turn: two replicas sharing a Redis each (where limits cost a Lua call), the
  ``chat`` scenario with short replies: server CPU per turn. Metrics observe the turn's
  latencies; limits take a turn-rate token, read the user's quota and streaming replies
  (one query), and hold a connection place per session.

Goal: ≤ 5 % overhead. The per-turn figure also runs an A/A control: the same two
deployments' setup with identical settings. Its spread is the floor below which a
per-turn difference means nothing (it measured -6.5 % and 0.0 %: two deployments side by
side on a 2-core machine do not get equal shares of it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from load import chat
from load.peer_fanout import FanoutParams, _server, server_env
from load.runner import execute
from load.spawn import Spawned, spawned_deployment

OFF = {"METRICS": "off", "LIMITS": "off"}


@dataclass(frozen=True)
class Overhead:
    fanout_us: tuple[float, float]  # server CPU per delivery: on, off
    turn_ms: tuple[float, float]  # server CPU per turn: on, off
    control_ms: tuple[float, float]  # the same, both sides with the defaults (A/A)
    rounds: int

    @staticmethod
    def pct(on_off: tuple[float, float]) -> float:
        return (on_off[0] / on_off[1] - 1) * 100

    def lines(self) -> list[str]:
        def row(label: str, unit: str, on_off: tuple[float, float]) -> str:
            on, off = on_off
            return f"  {label:36}{on:9.2f}{off:9.2f} {unit:4}{self.pct(on_off):+8.1f} %"

        return [
            f"metrics + limits: server CPU with them vs METRICS=off LIMITS=off, {self.rounds}"
            " alternating rounds each (goal: ≤ 5 %)",
            f"  {'':36}{'on':>9}{'off':>9}{'':5}{'overhead':>10}",
            row("fan-out, per delivery, 1 process", "µs", self.fanout_us),
            row("per turn, 2 replicas + Redis", "ms", self.turn_ms),
            row("  per turn, A/A control (both on)", "ms", self.control_ms),
        ]


@contextlib.contextmanager
def _on_and_off(
    replicas: int, env: dict[str, str], off_env: dict[str, str] = OFF
) -> Iterator[tuple[list[Spawned], ...]]:
    with (
        spawned_deployment(replicas, **env) as on,
        spawned_deployment(replicas, **env, **off_env) as off,
    ):
        yield on, off


def _fanout(rounds: int, params: FanoutParams) -> tuple[float, float]:
    cpu = {"on": 0.0, "off": 0.0}
    with _on_and_off(1, server_env(params)) as deployments:
        targets = {
            name: [(s.port, psutil.Process(s.process.pid)) for s in servers]
            for name, servers in zip(cpu, deployments, strict=True)
        }
        for name in cpu:  # warm
            asyncio.run(_server(params, targets[name]))
        for _ in range(rounds):
            for name in cpu:
                cpu[name] += asyncio.run(_server(params, targets[name])).server_cpu_s
    deliveries = rounds * params.subscribers * params.messages
    return cpu["on"] * 1e6 / deliveries, cpu["off"] * 1e6 / deliveries


def _turns(
    rounds: int, users: int, turns: int, off_env: dict[str, str] = OFF
) -> tuple[float, float]:
    params = chat.Params(
        users=users, devices=2, turns=turns, interval_ms=0, ttft_ms=0, tps=2000, tokens=10
    )
    cpu = {"on": 0.0, "off": 0.0}
    with _on_and_off(2, {}, off_env) as deployments:
        where = {
            name: ([s.ws_url for s in servers], [s.process.pid for s in servers])
            for name, servers in zip(cpu, deployments, strict=True)
        }
        for name in cpu:  # warm: first-turn imports and caches
            execute("chat", *where[name][:1], params, pids=where[name][1])
        for _ in range(rounds):
            for name in cpu:
                urls, pids = where[name]
                report = execute("chat", urls, params, pids=pids)
                if report.errors or report.counts.get("acked_turns") != users * turns:
                    raise RuntimeError(f"turn run failed: {report.errors} {report.counts}")
                cpu[name] += report.server["cpu_s"]
    per = rounds * users * turns
    return cpu["on"] * 1000 / per, cpu["off"] * 1000 / per


def run(rounds: int = 4, subscribers: int = 500, messages: int = 200) -> Overhead:
    fanout = FanoutParams(subscribers=subscribers, messages=messages, size=100)
    return Overhead(
        _fanout(rounds, fanout),
        _turns(rounds, users=20, turns=5),
        _turns(rounds, users=20, turns=5, off_env={}),
        rounds,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench_overhead", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    for line in run(args.rounds).lines():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
