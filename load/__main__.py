"""``python -m load SCENARIO``: drive a running server (``--url``, repeatable for
replicas) or one this command starts and stops itself (``--spawn``).

Every run is bounded in count and in time and stops by itself. Prints a table and,
with ``--json FILE``, writes the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
from pathlib import Path

from load import voice
from load.spawn import spawned_server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load", description=__doc__)
    parser.add_argument("scenario", choices=["voice"])
    parser.add_argument("--url", action="append", default=[], help="ws://host:port/ws (repeat)")
    parser.add_argument("--spawn", action="store_true", help="start a local server for the run")
    parser.add_argument("--json", type=Path, help="also write the report here")
    for f in dataclasses.fields(voice.VoiceParams):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    args = parser.parse_args(argv)
    if bool(args.url) == args.spawn:
        parser.error("give --url (one or more) or --spawn")
    params = voice.VoiceParams(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(voice.VoiceParams)}
    )

    before = resource.getrusage(resource.RUSAGE_SELF)
    if args.spawn:
        with spawned_server() as server:
            report = asyncio.run(voice.run([server.ws_url], params))
            report.counts["server_cpu_ms"] = int(server.cpu_seconds() * 1000)
    else:
        report = asyncio.run(voice.run(args.url, params))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report.counts["load_generator_cpu_ms"] = int(cpu * 1000)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    return 1 if report.counts.get("lost_turns") or report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
