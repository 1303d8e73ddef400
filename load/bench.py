"""``make bench``: a fixed, bounded comparison, printed as ratios measured in one run.

Fan-out of one long streamed reply to many subscribers: this server vs a bare
``websockets`` broadcast server (the ceiling for a Python process) vs python-socketio in
one process, then this server's two replicas vs python-socketio's two replicas with its
AsyncRedisManager on the same (embedded) Redis; plus server memory per idle connection.
Then server CPU per streamed token, this server vs a python-socketio token relay, both
streaming from the Gemini simulator through google-genai (load/bench_tokens.py), in one
process each and in two replicas each (python-socketio with its AsyncRedisManager).
Each target runs in its own processes, one after the other, with the same clients.
Then what metrics and limits cost: the same server with and without them, side by
side (load/bench_overhead.py). Then server CPU per turn and per returning device's
reconnect, beside the python-socketio relay's per turn (load/bench_turns.py); memory
per idle joined connection, by stage (``python -m load idle``); and the capacity ramp
on this server and on the relay (load/capacity_peer.py).

Every figure goes to one JSON file (``--json``; by default
bench-results/bench-<UTC time>.json) so runs can be compared over time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

from chat_server.llm.simulator import GEMINI_CHUNK, SimConfig, chunk_sizes
from load import bench_overhead, bench_tokens, bench_turns, capacity, capacity_peer, idle
from load.peer_fanout import TARGETS, FanoutParams, run
from load.report import Report
from load.runner import execute
from load.spawn import spawned_deployment


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--json", type=Path, help="where the figures go (default: bench-results/)")
    parser.add_argument("--idle-connections", type=int, default=2000)
    parser.add_argument("--capacity-ramp", default="10,20,40,80,160,320")
    parser.add_argument("--capacity-step-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.json is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        args.json = Path("bench-results") / f"bench-{stamp}.json"
    params = FanoutParams(subscribers=args.subscribers, messages=args.messages, size=args.size)
    results = {target: run(target, params) for target in TARGETS}
    two = dataclasses.replace(params, replicas=2)
    replicated = {target: run(target, two) for target in ("server", "socketio")}
    print(
        f"fan-out: {params.subscribers} subscribers x {params.messages} messages of "
        f"{params.size} bytes"
    )
    print(
        f"{'target':10}{'replicas':>9}{'deliv/s':>12}{'deliv/cpu-s':>14}{'seconds':>9}"
        f"{'frames/sub':>12}{'KiB/conn':>10}"
    )
    for r in [*results.values(), *replicated.values()]:
        print(
            f"{r.target:10}{r.replicas:>9}{r.deliveries_per_s:>12,.0f}"
            f"{r.deliveries_per_cpu_s:>14,.0f}{r.seconds:>9.2f}"
            f"{r.frames_per_subscriber:>12.0f}{r.rss_per_connection_kib:>10.1f}"
        )
    ours, ws, sio = results["server"], results["ws"], results["socketio"]
    ours2, sio2 = replicated["server"], replicated["socketio"]
    print("ratios (this server / peer), same run:")

    def ratio(label: str, value: float) -> None:
        print(f"  {label:48}{value:6.2f}x")

    ratio("fan-out vs python-socketio, 1 process", ours.deliveries_per_s / sio.deliveries_per_s)
    ratio("fan-out vs python-socketio, 2 replicas", ours2.deliveries_per_s / sio2.deliveries_per_s)
    ratio("fan-out vs bare websockets, 1 process", ours.deliveries_per_s / ws.deliveries_per_s)
    ratio(
        "per server CPU-s vs python-socketio", ours.deliveries_per_cpu_s / sio.deliveries_per_cpu_s
    )
    kib = ours.rss_per_connection_kib
    print(
        f"  {'memory/conn vs python-socketio, ws:':48}{kib / sio.rss_per_connection_kib:6.2f}x,"
        f" {kib / ws.rss_per_connection_kib:5.2f}x"
    )
    print(
        "  note: this server merges the deltas queued for a subscriber that lags, so its"
        " frames/sub can be far below the messages sent; the peers send every message."
    )
    per_token: dict[int | str, bench_tokens.TokenResult] = {}
    for replicas in (1, 2):
        tokens = bench_tokens.TokenParams(replicas=replicas)
        per_token[replicas] = result = bench_tokens.run(tokens)
        print(
            f"server CPU per streamed token, {'one process' if replicas == 1 else 'two replicas'}"
            " each: "
            f"{tokens.conversations} conversations x {tokens.devices} devices (spread over the"
            f" processes), replies of {tokens.tokens} and {4 * tokens.tokens} tokens,"
            f" {tokens.chunk} token(s) per chunk at {tokens.tps:g} tokens/s"
        )
        for line in result.lines():
            print(f"  {line}")
        mine, peer, sdk = (result.marginal_us[t] for t in bench_tokens.TARGETS)
        where = "1 process" if replicas == 1 else f"{replicas} replicas"
        ratio(f"per extra token vs python-socketio, {where}", peer / mine)
        label = "  the same, google-genai's share taken out"
        if mine - sdk < 0.2 * mine:
            # google-genai alone measured about as costly as the whole server: the
            # difference is noise, and dividing by it printed ratios like 1e11x.
            print(f"  {label:48}   n/a (google-genai alone ~ this server here)")
        else:
            ratio(label, (peer - sdk) / (mine - sdk))
    # Gemini streams tens of tokens per chunk, not one: the same turns, as it sends them.
    shaped_params = bench_tokens.TokenParams(chunk=0)
    per_token["gemini-shaped"] = shaped = bench_tokens.run(shaped_params)
    low, high = GEMINI_CHUNK
    print(
        f"server CPU per streamed token, one process, Gemini-shaped chunks ({low}-{high}"
        f" tokens each), otherwise as above:"
    )
    for line in shaped.lines():
        print(f"  {line}")
    mine, peer, _ = (shaped.per_token_us[t] for t in bench_tokens.TARGETS)
    # Per token with the turn included: at tens of tokens a chunk the turn's own cost
    # (routing, storage) is nearly all of it; the marginal slope is then within noise.
    ratio("per token, turn incl., vs python-socketio, Gemini-shaped", peer / mine)
    # Per chunk: the marginal cost of a token times the tokens of an average chunk (the
    # turn's own cost left out: per chunk "turn incl." would be the turn / 3 chunks).
    size = shaped_params.tokens / len(chunk_sizes(SimConfig(chunk_tokens=0), shaped_params.tokens))
    per_chunk = {t: us * size for t, us in shaped.marginal_us.items()}
    print(
        f"  per Gemini-shaped chunk (~{size:.0f} tokens), beyond the turn's own cost:"
        + ", ".join(f" {t} {us:,.0f} µs" for t, us in per_chunk.items())
    )
    one = per_token[1].per_token_us["this server"]
    ratio("per token, one-token chunks / Gemini-shaped", one / mine)
    overhead = bench_overhead.run()
    for line in overhead.lines():
        print(line)
    turns = bench_turns.run(bench_turns.TurnParams())
    for line in turns.lines():
        print(line)
    ratio("CPU per turn, python-socketio relay / this server", turns.peer_turn_ms / turns.turn_ms)
    idle_report = _idle(args.idle_connections)
    print(f"memory per idle joined connection ({args.idle_connections} connections):")
    for name, value in idle_report.derived.items():
        print(f"  {name:78}{value:6.1f}")
    ramp_params = capacity.Params(ramp=args.capacity_ramp, step_s=args.capacity_step_s)
    ramps = capacity_peer.run(ramp_params, replicas=1, procs=1)
    print("capacity ramp (load/capacity_peer.py), one replica:")
    for line in capacity_peer.table(ramps, ramp_params):
        print(f"  {line}")
    ok = {t: ramps[t].derived.get("people_ok_per_replica", 0.0) for t in capacity_peer.TARGETS}
    print(
        f"  people within the service level: this server {ok['server']:g}, relay {ok['socketio']:g}"
    )
    plot = args.json.with_suffix(".png")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    capacity_peer.plot(ramps, ramp_params, plot)
    everything = [*results.values(), *replicated.values()]
    args.json.write_text(
        json.dumps(
            {
                "fanout": [vars(r) for r in everything],
                "per_token": {n: vars(r) for n, r in per_token.items()},
                "per_chunk_gemini_shaped_us": per_chunk,
                "overhead": vars(overhead),
                "turns": bench_turns.as_json(turns),
                "idle_kib_per_connection": idle_report.derived,
                "capacity": {
                    "ramp_params": dataclasses.asdict(ramp_params),
                    "people_ok_per_replica": ok,
                    "steps": {t: capacity.verdicts(r, ramp_params) for t, r in ramps.items()},
                },
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"every figure: {args.json}; the capacity plot: {plot}")
    return 0


def _idle(connections: int) -> Report:
    """``python -m load idle --spawn``: server memory per idle joined connection."""
    with spawned_deployment(1, **idle.SERVER_ENV) as servers:
        return execute(
            "idle",
            [servers[0].ws_url],
            idle.Params(connections=connections),
            procs=2,
            pids=[servers[0].process.pid],
        )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
