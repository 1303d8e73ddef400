"""Percentiles and the report, as JSON and as a table."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Report:
    scenario: str
    params: dict[str, Any]
    samples: dict[str, list[float]] = field(default_factory=dict)  # metric → ms values
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # by error/close code

    def add(self, metric: str, value_ms: float) -> None:
        self.samples.setdefault(metric, []).append(value_ms)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            metric: {
                "n": len(values),
                "p50": percentile(values, 50),
                "p95": percentile(values, 95),
                "p99": percentile(values, 99),
                "max": max(values),
            }
            for metric, values in sorted(self.samples.items())
            if values
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "params": self.params,
            "latency_ms": self.summary(),
            "counts": dict(self.counts),
            "errors": dict(self.errors),
        }

    def table(self) -> str:
        lines = [
            f"scenario {self.scenario}: " + ", ".join(f"{k}={v}" for k, v in self.params.items())
        ]
        lines.append(f"{'metric (ms)':36}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
        for metric, s in self.summary().items():
            lines.append(
                f"{metric:36}{s['n']:>6.0f}{s['p50']:>9.1f}{s['p95']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}"
            )
        lines.append(
            "counts: " + (", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "-")
        )
        lines.append(
            "errors: " + (", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none")
        )
        return "\n".join(lines)
