"""Percentiles and the report, as JSON, as a table and (for long runs) as a PNG plot.

A report is filled by one load process; ``merge`` folds in the reports of the other
load processes of the same run (samples carry wall-clock times, so they line up).
"""

from __future__ import annotations

import math
import time
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
    times: dict[str, list[float]] = field(default_factory=dict)  # metric → wall-clock s
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # by error/close code
    window: tuple[float, float] | None = None  # wall-clock span of the measured phase
    server: dict[str, float] = field(default_factory=dict)  # CPU, RSS of server processes
    derived: dict[str, float] = field(default_factory=dict)  # figures a scenario computes

    def add(self, metric: str, value_ms: float) -> None:
        self.samples.setdefault(metric, []).append(value_ms)
        self.times.setdefault(metric, []).append(time.time())

    def measured(self, start: float, end: float) -> None:
        """Widen the measured phase to cover ``start``..``end`` (wall-clock seconds)."""
        if self.window is not None:
            start, end = min(start, self.window[0]), max(end, self.window[1])
        self.window = (start, end)

    def raw(self) -> dict[str, Any]:
        """Everything, for ``from_raw`` in another process."""
        return {
            "scenario": self.scenario,
            "params": self.params,
            "samples": self.samples,
            "times": self.times,
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "window": self.window,
            "derived": self.derived,
        }

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Report:
        window = raw["window"]
        return cls(
            raw["scenario"],
            raw["params"],
            raw["samples"],
            raw["times"],
            Counter(raw["counts"]),
            Counter(raw["errors"]),
            tuple(window) if window else None,
            derived=raw["derived"],
        )

    def merge(self, other: Report) -> None:
        for metric, values in other.samples.items():
            self.samples.setdefault(metric, []).extend(values)
            self.times.setdefault(metric, []).extend(other.times.get(metric, []))
        self.counts.update(other.counts)
        self.errors.update(other.errors)
        self.derived.update(other.derived)
        if other.window is not None:
            self.measured(*other.window)

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
            "server": self.server,
            "rates": self.rates(),
            "derived": self.derived,
        }

    def rates(self) -> dict[str, float]:
        """Deliveries per second of the measured phase and per server CPU-second."""
        deliveries = self.counts.get("deliveries", 0)
        rates: dict[str, float] = {}
        if deliveries and self.window is not None and self.window[1] > self.window[0]:
            rates["deliveries_per_s"] = deliveries / (self.window[1] - self.window[0])
        if deliveries and self.server.get("cpu_s"):
            rates["deliveries_per_server_cpu_s"] = deliveries / self.server["cpu_s"]
        return rates

    def table(self) -> str:
        lines = [
            f"scenario {self.scenario}: " + ", ".join(f"{k}={v}" for k, v in self.params.items())
        ]
        lines.append(f"{'metric (ms)':44}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
        for metric, s in self.summary().items():
            lines.append(
                f"{metric:44}{s['n']:>6.0f}{s['p50']:>9.1f}{s['p95']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}"
            )
        lines.append(
            "counts: " + (", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "-")
        )
        lines.append(
            "errors: " + (", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none")
        )
        for name, value in self.derived.items():
            lines.append(f"{name}: {value:,.1f}")
        figures = {**self.rates(), **self.server}
        if figures:
            lines.append(
                "server: " + ", ".join(f"{k}={v:,.1f}" for k, v in sorted(figures.items()))
            )
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Latency over time, one series per metric (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(10, 5))
        start = min((min(t) for t in self.times.values() if t), default=0.0)
        for metric in sorted(self.samples):
            xs = [t - start for t in self.times.get(metric, [])]
            axes.plot(xs, self.samples[metric], ".", markersize=2, label=metric)
        axes.set_xlabel("seconds into the run")
        axes.set_ylabel("ms")
        axes.set_yscale("log")
        axes.set_title(f"{self.scenario}: latency over time")
        axes.legend(fontsize="small", markerscale=4)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
