"""Runs one scenario over several load-generator processes and merges their reports.

A scenario is a module with a frozen ``Params`` dataclass and

- ``async def setup(urls, params, pids) -> dict``: once, before the load processes start
  (e.g. create the conversation everyone joins); its result goes to every process;
- ``async def run(ctx: Shard) -> None``: the share of the clients of one process
  (``ctx.shard`` of ``ctx.shards``), adding samples and counts to ``ctx.report``;
- optionally ``def finish(report)``: figures derived from the merged report.

Processes are started with ``spawn`` so each has its own interpreter and event loop;
``ctx.together()`` waits until every process reached the same point (e.g. all
subscribers joined before the first reply). The CPU time of the load processes and,
for server processes on this machine (``pids``), their CPU time and RSS are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import resource
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from load.client import failure
from load.report import Report

SCENARIOS = ("chat", "fanout", "voice", "reconnect", "idle", "abuse", "capacity", "storm")


def scenario_module(name: str) -> Any:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}")
    return importlib.import_module(f"load.{name}")


@dataclass
class Shard:
    urls: list[str]
    params: Any
    setup: dict[str, Any]
    report: Report
    shard: int = 0
    shards: int = 1
    pids: list[int] = field(default_factory=list)
    together: Callable[[], Awaitable[None]] = field(default=lambda: _no_wait())

    def mine(self, count: int) -> range:
        """The indexes (of ``count`` clients) this process runs."""
        return range(self.shard, count, self.shards)


def server_rss(pids: list[int]) -> int:
    """Resident memory of these processes, in bytes (0 for any that is gone)."""
    return sum(_rss(pid) for pid in pids)


async def _no_wait() -> None:
    return None


async def run_clients(ctx: Shard, jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run one coroutine per simulated client within the run's deadline; a client that
    fails is counted by error code, and the span they ran is the measured phase."""
    started = time.time()
    try:
        async with asyncio.timeout(ctx.params.duration_s):
            results = await asyncio.gather(*jobs, return_exceptions=True)
    except TimeoutError:
        ctx.report.errors["load:deadline"] += 1
        return
    for result in results:
        if isinstance(result, BaseException):
            ctx.report.errors[failure(result)] += 1
    ctx.report.measured(started, time.time())


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(
    name: str,
    urls: list[str],
    params: dict[str, Any],
    setup: dict[str, Any],
    shard: int,
    shards: int,
    pids: list[int],
    barrier: Any,
    results: Any,
) -> None:
    module = scenario_module(name)
    report = Report(name, params)

    async def together() -> None:
        await asyncio.to_thread(barrier.wait, module.Params(**params).duration_s)

    ctx = Shard(urls, module.Params(**params), setup, report, shard, shards, pids, together)
    try:
        asyncio.run(module.run(ctx))
    except BaseException as exc:  # reported, never lost: the parent merges it
        report.errors[f"load:{type(exc).__name__}"] += 1
        barrier.abort()
    report.counts["load_cpu_ms"] += int(_own_cpu() * 1000)
    results.put(report.raw())


def execute(name: str, urls: list[str], params: Any, *, procs: int = 1, pids: list[int]) -> Report:
    """Run scenario ``name`` against ``urls`` from ``procs`` processes; a merged report."""
    module = scenario_module(name)
    setup = asyncio.run(module.setup(urls, params, pids))
    cpu_before = _cpu(pids)
    own_before = _own_cpu()
    started = time.time()
    if procs <= 1:
        report = Report(name, asdict(params))
        asyncio.run(module.run(Shard(urls, params, setup, report, pids=pids)))
        report.counts["load_cpu_ms"] += int((_own_cpu() - own_before) * 1000)
    else:
        report = _in_processes(name, urls, params, setup, procs, pids)
    report.params = asdict(params) | {"urls": len(urls), "load_processes": max(procs, 1)}
    report.server["cpu_s"] = _cpu(pids) - cpu_before
    if pids:
        report.server["rss_mib"] = server_rss(pids) / 2**20
    if report.window is None:
        report.measured(started, time.time())
    if hasattr(module, "finish"):
        module.finish(report)
    return report


def _in_processes(
    name: str, urls: list[str], params: Any, setup: dict[str, Any], procs: int, pids: list[int]
) -> Report:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(name, urls, asdict(params), setup, i, procs, pids, barrier, results),
            name=f"load-{name}-{i}",
        )
        for i in range(procs)
    ]
    for worker in workers:
        worker.start()
    report = Report(name, asdict(params))
    deadline = time.monotonic() + params.duration_s + 60
    got = 0
    try:
        while got < procs and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                report.merge(Report.from_raw(results.get(timeout=1)))
                got += 1
            if got < procs and not any(w.is_alive() for w in workers) and results.empty():
                break
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    if got < procs:
        report.errors["load:process_lost"] += procs - got
    return report


__all__ = ["SCENARIOS", "Shard", "execute", "run_clients", "scenario_module", "server_rss"]
