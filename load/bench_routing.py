"""Routing quality per embedder, side by side: ``python -m load.bench_routing``.

For each embedder, starts a throwaway server with ``EMBEDDER`` set (the standalone
simulator answers Gemini embedding calls, so "gemini" here measures the code path with
stand-in vectors, not Gemini's quality), builds the team of tests/data/team.json and
dry-runs the 210 labelled turns through ``POST /api/v1/route``.
"""

from __future__ import annotations

import sys
import time

from load.routing_eval import evaluate
from load.spawn import spawned_server

EMBEDDERS = ("hashing", "gemini")


def main(argv: list[str]) -> int:
    embedders = argv or list(EMBEDDERS)
    print(
        f"{'embedder':10}{'turns':>7}{'accuracy':>10}{'en':>7}{'ja':>7}"
        f"{'abstain P':>11}{'abstain R':>11}{'ms/turn':>9}"
    )
    for name in embedders:
        with spawned_server(EMBEDDER=name) as server:
            started = time.perf_counter()
            score = evaluate(f"http://127.0.0.1:{server.port}")
            elapsed = (time.perf_counter() - started) * 1000 / max(score.total, 1)
        by = {k: score.correct_by_language[k] / score.by_language[k] for k in score.by_language}
        print(
            f"{name:10}{score.total:>7}{score.accuracy:>10.3f}{by.get('en', 0):>7.3f}"
            f"{by.get('ja', 0):>7.3f}{score.abstain_precision:>11.3f}"
            f"{score.abstain_recall:>11.3f}{elapsed:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
