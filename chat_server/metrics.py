"""Prometheus metrics of one replica, served at ``/metrics`` (prometheus-client).

Every series carries a ``replica`` label and never a user or conversation id, so the
number of series stays bounded whatever the traffic. Each replica has its own registry
(several apps can live in one process, as in the tests). The hot paths only increment
children resolved once here; gauges that mirror state (Redis, drain, pool) are read at
scrape time. With ``METRICS=off`` every metric is ``_Off``, which does nothing (the
benchmarks measure what metrics cost by turning them off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class _Off:
    """A metric that is not kept: every call does nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def _nothing(self, *args: Any) -> None:
        return None

    inc = dec = observe = set = set_function = _nothing


_OFF: Any = _Off()


class Tally:
    """A counter family for the hottest paths (per frame, per bus event): plain ints,
    read at scrape time. prometheus-client's ``Counter.inc`` takes a lock (~0.4 µs);
    once per frame sent to every subscriber that was ~20 % of a fan-out's server CPU
    (``python -m load.bench_overhead``). One event loop increments, so no lock is needed.
    """

    def __init__(self, name: str, doc: str, replica: str, label: str | None = None) -> None:
        self._name, self._doc, self._replica, self._label = name, doc, replica, label
        self.counts: dict[str, int] = {}  # label value ("" without a label) → count

    def inc(self, value: str = "") -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = ["replica"] if self._label is None else ["replica", self._label]
        family = CounterMetricFamily(self._name, self._doc, labels=labels)
        for value, count in tuple(self.counts.items()):
            family.add_metric(
                [self._replica] if self._label is None else [self._replica, value], count
            )
        yield family


class Metrics:
    def __init__(self, replica: str, *, enabled: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.replica = replica
        self.enabled = enabled
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            if not enabled:
                return cast(Counter, _OFF)
            return Counter(name, doc, ["replica", *labels], registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            if not enabled:
                return cast(Histogram, _OFF)
            return Histogram(name, doc, ["replica"], buckets=buckets, registry=r)

        self.connections_open = self._gauge("chat_connections_open", "Open WebSockets")
        self.connections_closed = counter(
            "chat_connections_closed_total", "WebSockets closed, by close code", "code"
        )
        self.joins = counter(
            "chat_joins_total", "Conversation joins, by resume outcome", "recovered"
        )
        self.joined = self._gauge("chat_conversations_joined", "Conversation joins held now")
        self.frames_in = self._tally("chat_frames_in", "Client frames, by type", "type")
        self.frames_out = self._tally("chat_frames_out", "Frames sent, by type", "type")
        self.sends = counter("chat_sends_total", "User turns received (send or final input)")
        self.acks = counter(
            "chat_acks_total", "Turns acknowledged, by whether a duplicate", "duplicate"
        )
        self.turns_started = counter("chat_turns_started_total", "Replies started")
        self.turns_ended = counter("chat_turns_ended_total", "Replies ended, by finish", "finish")
        self.send_to_ack = histogram(
            "chat_send_to_ack_seconds", "Turn received → ack queued", LATENCY_BUCKETS
        )
        self.send_to_first_delta = histogram(
            "chat_send_to_first_delta_seconds", "Turn received → first delta out", LATENCY_BUCKETS
        )
        self.model_ttft = histogram(
            "chat_model_ttft_seconds", "Model request → first token", LATENCY_BUCKETS
        )
        self.turn_duration = histogram(
            "chat_turn_duration_seconds", "Reply start → end", DURATION_BUCKETS
        )
        self.model_requests = counter("chat_model_requests_total", "Model streams opened")
        self.model_errors = counter("chat_model_errors_total", "Model failures, by code", "code")
        self.bus_publishes = self._tally("chat_bus_publishes", "Events published to the bus")
        self.bus_deliveries = self._tally(
            "chat_bus_deliveries", "Events received from other replicas"
        )
        self.gap_repairs = counter("chat_gap_repairs_total", "Reply gaps repaired for a device")
        self.slow_consumers = counter(
            "chat_slow_consumer_closes_total", "Devices closed for not reading fast enough"
        )
        self.limits_hit = counter("chat_limits_hit_total", "Requests over a limit", "limit")
        # read at scrape time (see ``watch``)
        self.bus_up = self._gauge("chat_bus_up", "1 while the bus (Redis) is connected")
        self.draining = self._gauge("chat_draining", "1 while this replica drains")
        self.db_in_use = self._gauge(
            "chat_db_connections_in_use", "Postgres connections checked out of the pool"
        )
        # children resolved once: the hot paths only increment
        self.sends_c = self.sends.labels(replica)
        self.turns_started_c = self.turns_started.labels(replica)
        self.model_requests_c = self.model_requests.labels(replica)
        self.gap_repairs_c = self.gap_repairs.labels(replica)
        self.send_to_ack_c = self.send_to_ack.labels(replica)
        self.send_to_first_delta_c = self.send_to_first_delta.labels(replica)
        self.model_ttft_c = self.model_ttft.labels(replica)
        self.turn_duration_c = self.turn_duration.labels(replica)

    def _gauge(self, name: str, doc: str) -> Gauge:
        if not self.enabled:
            return cast(Gauge, _OFF)
        gauge = Gauge(name, doc, ["replica"], registry=self.registry)
        child: Gauge = gauge.labels(self.replica)
        return child

    @staticmethod
    def watch(gauge: Gauge, read: Callable[[], float]) -> None:
        """Make ``gauge`` read ``read()`` at scrape time (Redis up, draining, pool)."""
        gauge.set_function(read)

    def limit_hit(self, limit: str) -> None:
        """A request over ``limit`` (turns, frames, connections, ...) was refused."""
        self.limits_hit.labels(self.replica, limit).inc()

    def _tally(self, name: str, doc: str, label: str | None = None) -> Tally:
        if not self.enabled:
            return cast(Tally, _OFF)
        tally = Tally(name, doc, self.replica, label)
        self.registry.register(tally)
        return tally

    def render(self) -> bytes:
        return generate_latest(self.registry)
