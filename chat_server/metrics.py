"""Prometheus metrics of one replica, served at ``/metrics`` (prometheus-client).

Every series carries a ``replica`` label and never a user or conversation id, so the
number of series stays bounded whatever the traffic. Each replica has its own registry
(several apps can live in one process, as in the tests). The hot paths only increment
children resolved once here; gauges that mirror state (Redis, drain, pool) are read at
scrape time. With ``METRICS=off`` every metric is ``_Off``, which does nothing (the
benchmarks measure what metrics cost by turning them off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.frames_in = counter("chat_frames_in_total", "Client frames, by type", "type")
        self.frames_out = counter("chat_frames_out_total", "Frames sent, by type", "type")
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
        self.bus_publishes = counter("chat_bus_publishes_total", "Events published to the bus")
        self.bus_deliveries = counter(
            "chat_bus_deliveries_total", "Events received from other replicas"
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
        self.bus_publishes_c = self.bus_publishes.labels(replica)
        self.bus_deliveries_c = self.bus_deliveries.labels(replica)
        self.gap_repairs_c = self.gap_repairs.labels(replica)
        self.send_to_ack_c = self.send_to_ack.labels(replica)
        self.send_to_first_delta_c = self.send_to_first_delta.labels(replica)
        self.model_ttft_c = self.model_ttft.labels(replica)
        self.turn_duration_c = self.turn_duration.labels(replica)
        self._by_type: dict[tuple[Counter, str], Counter] = {}

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

    def frame_in(self, kind: str) -> None:
        self._count_type(self.frames_in, kind)

    def frame_out(self, kind: str) -> None:
        self._count_type(self.frames_out, kind)

    def _count_type(self, family: Counter, kind: str) -> None:
        """Per frame: the child for (family, type) resolved once, then only incremented."""
        child = self._by_type.get((family, kind))
        if child is None:
            child = self._by_type[(family, kind)] = family.labels(self.replica, kind)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
