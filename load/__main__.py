"""``python -m load SCENARIO``: drive a running server (``--url``, repeat it for
replicas) or servers this command starts and stops itself (``--spawn``, with
``--replicas N`` sharing an embedded Redis).

Scenarios: chat, fanout, voice, reconnect, idle, abuse, capacity, storm (``python -m load
SCENARIO -h`` lists each one's parameters). ``--procs N`` spreads the simulated clients over N load
processes. Every run is bounded in count and in time (``--duration-s``) and stops by
itself. Prints a table; ``--json FILE`` writes the report, ``--plot FILE.png`` plots
latency over time. With ``--spawn`` (or ``--pid`` of servers on this machine) the
report has the servers' CPU time and RSS. Exits 1 if anything was lost or failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from load.runner import SCENARIOS, execute, scenario_module
from load.spawn import spawned_deployment


def _add_params(parser: argparse.ArgumentParser, params_type: Any) -> None:
    for f in dataclasses.fields(params_type):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                default=f.default,
            )
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)


def main(argv: list[str]) -> int:
    scenario = argv[0] if argv and argv[0] in SCENARIOS else None
    parser = argparse.ArgumentParser(prog="python -m load", description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--url", action="append", default=[], help="ws://host:port/ws (repeat)")
    parser.add_argument("--spawn", action="store_true", help="start local servers for the run")
    parser.add_argument("--replicas", type=int, default=1, help="with --spawn: servers + Redis")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--pid", type=int, action="append", default=[], help="server pid(s)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--plot", type=Path, help="plot latency over time to this PNG")
    module = scenario_module(scenario) if scenario else None
    if module is not None:
        _add_params(parser, module.Params)
    args = parser.parse_args(argv)
    if bool(args.url) == args.spawn:
        parser.error("give --url (one or more) or --spawn")
    assert module is not None
    params = module.Params(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(module.Params)}
    )
    if args.spawn:
        with spawned_deployment(args.replicas, **getattr(module, "SERVER_ENV", {})) as servers:
            urls = [s.ws_url for s in servers]
            pids = [s.process.pid for s in servers]
            report = execute(args.scenario, urls, params, procs=args.procs, pids=pids)
    else:
        report = execute(args.scenario, args.url, params, procs=args.procs, pids=args.pid)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    if args.plot:
        report.plot(str(args.plot))
    lost = sum(v for k, v in report.counts.items() if k.startswith("lost"))
    return 1 if lost or report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
