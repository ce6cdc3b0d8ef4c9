"""The stream worker's counters and freshness, as Prometheus metrics and for status lines.

Freshness is the time from an event's Kafka timestamp (set when it was produced; a forwarded
event keeps it) to the moment its feature rows are readable in the online store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streaming.validation import REASONS

_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    def __init__(self, samples: int = 200_000) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "featurestore_stream_records_consumed",
            "Records read from Kafka, per topic.",
            ["topic"],
            registry=self.registry,
        )
        self.applied = Counter(
            "featurestore_stream_events_applied",
            "Events applied to the window state, per topic.",
            ["topic"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "featurestore_stream_duplicates_skipped",
            "Forwarded events seen again after a crash of the stage that forwarded them.",
            registry=self.registry,
        )
        self.handed_over = Counter(
            "featurestore_stream_handed_over",
            "Events at or before the cold-start hand-over point, left to the batch data.",
            ["topic"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "featurestore_stream_dead_letters",
            "Events sent to the dead-letter topic, per reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.online_rows = Counter(
            "featurestore_stream_online_rows_written",
            "Feature rows sent to the online store, per feature view.",
            ["view"],
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "featurestore_stream_checkpoints",
            "Partition checkpoints written.",
            registry=self.registry,
        )
        self.fenced = Counter(
            "featurestore_stream_fenced_checkpoints",
            "Partition checkpoints not written: another worker had taken the partition.",
            registry=self.registry,
        )
        self.outages = Counter(
            "featurestore_stream_outages",
            "Times a dependency was unavailable and consumption paused, per dependency.",
            ["dependency"],
            registry=self.registry,
        )
        self.freshness = Histogram(
            "featurestore_stream_freshness_seconds",
            "Event (Kafka timestamp) to readable in the online store.",
            buckets=_FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self.watermark = Gauge(
            "featurestore_stream_watermark_seconds",
            "Newest event time applied, per topic (UNIX seconds).",
            ["topic"],
            registry=self.registry,
        )
        # Feast switches prometheus_client to multiprocess mode on import, where metrics of the
        # same name share one value per process; what this worker reports comes from its own.
        self._applied: dict[str, int] = {}
        self._dead: dict[str, int] = dict.fromkeys(REASONS, 0)
        # The last `samples` freshness values (ms), for exact percentiles in status lines.
        self._ring = np.zeros(samples, dtype=np.int64)
        self._filled = 0
        self._next = 0
        self._lock = threading.Lock()

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def observe_freshness(self, latencies_ms: np.ndarray) -> None:
        latencies_ms = np.asarray(latencies_ms, dtype=np.int64)[-len(self._ring) :]
        observe_all(self.freshness, latencies_ms / 1000)
        with self._lock:
            at = (self._next + np.arange(len(latencies_ms))) % len(self._ring)
            self._ring[at] = latencies_ms
            self._next = (self._next + len(latencies_ms)) % len(self._ring)
            self._filled = min(self._filled + len(latencies_ms), len(self._ring))

    def freshness_percentiles(self, quantiles: Iterable[float]) -> list[float]:
        """Percentiles (ms) of the recent freshness samples; NaN when there are none."""
        with self._lock:
            recent = self._ring[: self._filled].copy()
        if not len(recent):
            return [float("nan") for _ in quantiles]
        return [float(np.percentile(recent, q)) for q in quantiles]

    def reset_freshness(self) -> None:
        with self._lock:
            self._filled = self._next = 0

    def record_applied(self, topic: str, events: int) -> None:
        self.applied.labels(topic).inc(events)
        self._applied[topic] = self._applied.get(topic, 0) + events

    def record_dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()
        self._dead[reason] += 1

    def applied_events(self, topics: Iterable[str]) -> int:
        """Events this worker applied from `topics`."""
        return sum(self._applied.get(topic, 0) for topic in topics)

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(self._dead)


def observe_all(histogram: Histogram, amounts: np.ndarray) -> None:
    """`histogram.observe(a)` for every `a` of `amounts`, in one increment per bucket: per
    event, `observe` was a tenth of the worker's time. It writes the counters `observe` writes
    (prometheus_client's own: the bucket an amount is at most the bound of, and the sum)."""
    if not len(amounts):
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(amounts)))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
