"""``python -m load.capacity_peer``: the capacity ramp (load/capacity.py) on this server
and then on the python-socketio relay, in one run, with the same people, replies,
simulator and service level.

The relay (load/peers/socketio_relay.py) acks a turn at once and relays the model's
chunks to the conversation's room through google-genai: no identity, storage,
routing, sequence numbers, resume, limits or metrics. What it sustains is the ceiling
of a Python process doing only the streaming; what this server sustains is the price
of the rest.

Prints each target's steps with their p99s and verdicts, the people each met the
service level with (per replica) and their ratio; ``--plot FILE.png`` draws the p99s
over the ramp for both, with the service level's bounds; ``--json FILE`` keeps it all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from load import capacity
from load.peer_fanout import _peers, _redis
from load.report import Report
from load.runner import execute
from load.spawn import spawned_deployment

TARGETS = ("server", "socketio")


def run(params: capacity.Params, replicas: int, procs: int) -> dict[str, Report]:
    reports: dict[str, Report] = {}
    with spawned_deployment(replicas) as servers:
        pids = [s.process.pid for s in servers]
        reports["server"] = execute(
            "capacity", [s.ws_url for s in servers], params, procs=procs, pids=pids
        )
        with contextlib.ExitStack() as stack:
            extra: tuple[str, ...] = ()
            if replicas > 1:
                extra = ("--redis", stack.enter_context(_redis()).url)
            peers = stack.enter_context(
                _peers(
                    "load.peers.socketio_relay", replicas, "--gemini", servers[0].sim_url, *extra
                )
            )
            urls = [
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" for port, _ in peers
            ]
            reports["socketio"] = execute(
                "capacity",
                urls,
                replace(params, target="socketio"),
                procs=procs,
                pids=[process.pid for _, process in peers],
            )
    return reports


def table(reports: dict[str, Report], params: capacity.Params) -> list[str]:
    lines = [
        f"{'target':10}{'people':>8}{'turns/s':>9}{'ack p99':>10}{'first p99':>11}"
        f"{'chunk p99':>11}  verdict"
    ]
    for target, report in reports.items():
        for row in capacity.verdicts(report, params):
            lines.append(
                f"{target:10}{row['people']:>8}{row['turns_per_s']:>9.1f}"
                f"{row['ack_p99_ms']:>10.1f}{row['first_p99_ms']:>11.1f}"
                f"{row['chunk_p99_ms']:>11.1f}  {'ok' if row['ok'] else 'broken'}"
            )
    return lines


def plot(reports: dict[str, Report], params: capacity.Params, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    bounds = (
        ("ack_p99_ms", "send → ack p99 (ms)", params.ack_ms),
        ("first_p99_ms", "first delta after the model's, p99 (ms)", params.first_ms),
        ("chunk_p99_ms", "chunk emit → device p99 (ms)", params.chunk_ms),
    )
    for ax, (key, title, bound) in zip(axes, bounds, strict=True):
        for target, report in reports.items():
            rows = capacity.verdicts(report, params)
            ax.plot([r["people"] for r in rows], [r[key] for r in rows], "o-", label=target)
        ax.axhline(bound, color="red", linestyle="--", linewidth=1, label="service level")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("people chatting at once")
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
    figure.suptitle("capacity ramp: this server vs the python-socketio relay")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.capacity_peer", description=__doc__)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--ramp", default=capacity.Params.ramp)
    parser.add_argument("--step-s", type=float, default=capacity.Params.step_s)
    parser.add_argument("--think-s", type=float, default=capacity.Params.think_s)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    params = capacity.Params(ramp=args.ramp, step_s=args.step_s, think_s=args.think_s)
    reports = run(params, args.replicas, args.procs)
    print("\n".join(table(reports, params)))
    ok = {t: reports[t].derived.get("people_ok_per_replica", 0.0) for t in TARGETS}
    print(
        f"people within the service level, per replica: this server {ok['server']:g},"
        f" python-socketio relay {ok['socketio']:g}"
        + (f" ({ok['server'] / ok['socketio']:.2f}x)" if ok["socketio"] else "")
    )
    if args.plot:
        plot(reports, params, args.plot)
    if args.json:
        everything: dict[str, Any] = {t: r.to_json() for t, r in reports.items()}
        everything["params"] = asdict(params) | {"replicas": args.replicas}
        args.json.write_text(json.dumps(everything, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
