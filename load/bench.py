"""``make bench``: a fixed, bounded comparison, printed as ratios measured in one run.

Single-process fan-out of one long streamed reply to many subscribers: this server vs
a bare ``websockets`` broadcast server (the ceiling for a Python process) vs
python-socketio, plus server memory per idle connection for all three. Each target
runs in its own process on this machine, one after the other, with the same clients.
"""

from __future__ import annotations

import argparse
import json
import sys

from load.fanout import TARGETS, FanoutParams, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    params = FanoutParams(subscribers=args.subscribers, messages=args.messages, size=args.size)
    results = {target: run(target, params) for target in TARGETS}
    print(
        f"fan-out: {params.subscribers} subscribers x {params.messages} messages of "
        f"{params.size} bytes, single process each"
    )
    print(
        f"{'target':10}{'deliv/s':>12}{'deliv/cpu-s':>14}{'seconds':>9}{'frames/sub':>12}{'KiB/conn':>10}"
    )
    for r in results.values():
        print(
            f"{r.target:10}{r.deliveries_per_s:>12,.0f}{r.deliveries_per_cpu_s:>14,.0f}"
            f"{r.seconds:>9.2f}{r.frames_per_subscriber:>12.0f}{r.rss_per_connection_kib:>10.1f}"
        )
    ours, ws, sio = results["server"], results["ws"], results["socketio"]
    print("ratios (this server / peer), same run:")
    print(f"  fan-out vs python-socketio:    {ours.deliveries_per_s / sio.deliveries_per_s:5.2f}x")
    print(f"  fan-out vs bare websockets:    {ours.deliveries_per_s / ws.deliveries_per_s:5.2f}x")
    per_cpu = ours.deliveries_per_cpu_s / sio.deliveries_per_cpu_s
    print(f"  per CPU-s vs python-socketio:  {per_cpu:5.2f}x")
    kib = ours.rss_per_connection_kib
    print(
        f"  memory/conn vs socketio, ws:   {kib / sio.rss_per_connection_kib:5.2f}x,"
        f" {kib / ws.rss_per_connection_kib:5.2f}x"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({t: vars(r) for t, r in results.items()}, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
