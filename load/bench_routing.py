"""Routing quality per embedder, side by side: ``python -m load.bench_routing``.

For each embedder, starts a throwaway server with ``EMBEDDER`` set, builds each team
and dry-runs its labelled turns through ``POST /api/v1/route`` (load/routing_eval.py):
the office team's TEST half (its TUNE half chose the embedder and the abstain rule, so
it is printed only for reference, marked "tuned"), and every turn of the shop team
(never tuned on). "gemini" here is the standalone simulator's stand-in vectors: it
measures the code path, not Gemini's quality.

Then the cost of each offline embedder on its own, in a fresh process: load time,
memory (RSS growth) and CPU per turn embedded one at a time. Last, the feedback
experiment with the default embedder: teach every misrouted turn, re-score the set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from load.routing_eval import ALL, TEST, TUNE, Score, evaluate, feedback_experiment, labelled
from load.spawn import spawned_server

EMBEDDERS = ("use", "hashing", "gemini")
SETS = (("office", TEST, "office test"), ("office", TUNE, "office tuned"), ("shop", ALL, "shop"))

_COST = """
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server sets it
import asyncio, json, resource, sys, time
from load.routing_eval import labelled
from chat_server.router.encoder import SentenceEncoder
from chat_server.router.embedding import HashingEmbedder
name = sys.argv[1]
texts = [r["text"] for team in ("office", "shop") for r in labelled(team)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()  # after the imports every embedder shares
embedder = SentenceEncoder() if name == "use" else HashingEmbedder()
async def main():
    await embedder.embed(["warm up"])
    loaded = time.perf_counter() - started
    cpu = time.process_time()
    for text in texts:
        await embedder.embed([text])
    per_turn = (time.process_time() - cpu) * 1000 / len(texts)
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"load_s": loaded, "cpu_ms": per_turn, "rss_mb": rss}))
asyncio.run(main())
"""


def _row(label: str, name: str, score: Score, ms: float) -> str:
    by = {k: score.correct_by_language[k] / score.by_language[k] for k in score.by_language}
    return (
        f"{name:9}{label:14}{score.total:>6}{score.accuracy:>9.3f}{by.get('en', 0):>7.3f}"
        f"{by.get('ja', 0):>7.3f}{score.abstain_precision:>10.3f}{score.abstain_recall:>10.3f}"
        f"{ms:>9.1f}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench_routing", description=__doc__)
    parser.add_argument("embedders", nargs="*", default=list(EMBEDDERS))
    parser.add_argument("--no-feedback", action="store_true")
    args = parser.parse_args(argv)
    print(
        f"{'embedder':9}{'set':14}{'turns':>6}{'accuracy':>9}{'en':>7}{'ja':>7}"
        f"{'abstain P':>10}{'abstain R':>10}{'ms/turn':>9}"
    )
    for name in args.embedders:
        with spawned_server(EMBEDDER=name) as server:
            base = f"http://127.0.0.1:{server.port}"
            for team, part, label in SETS:
                started = time.perf_counter()
                score = evaluate(base, team=team, part=part)
                ms = (time.perf_counter() - started) * 1000 / max(score.total, 1)
                print(_row(label, name, score, ms), flush=True)
    print("\noffline embedders alone, one turn at a time, fresh process each:")
    print(f"{'embedder':9}{'load s':>8}{'RSS MB':>8}{'CPU ms/turn':>13}")
    for name in ("use", "hashing"):
        out = subprocess.run(
            [sys.executable, "-c", _COST, name], capture_output=True, text=True, check=True
        )
        cost = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:9}{cost['load_s']:>8.2f}{cost['rss_mb']:>8.0f}{cost['cpu_ms']:>13.2f}")
    if not args.no_feedback:
        print("\nfeedback: teach every misrouted specialist turn, re-score the whole set")
        with spawned_server(EMBEDDER="use") as server:
            base = f"http://127.0.0.1:{server.port}"
            for team in ("office", "shop"):
                taught = feedback_experiment(base, server.ws_url, team)
                print(
                    f"  {team:7} {len(labelled(team))} turns: taught {taught.taught} "
                    f"(now right: {taught.fixed_taught}); other turns fixed "
                    f"{taught.fixed_other}, broken {taught.broken}; accuracy "
                    f"{taught.before.accuracy:.3f} -> {taught.after.accuracy:.3f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
