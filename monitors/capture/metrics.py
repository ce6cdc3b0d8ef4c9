"""The capture counters, one set per Prometheus registry."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class CaptureMetrics:
    sent: Counter
    dropped: Counter
    malformed: Counter


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, CaptureMetrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_in(registry: CollectorRegistry) -> CaptureMetrics:
    """The capture counters of `registry` (the API's default registry, or the stream worker's).
    Feast puts prometheus_client in multiprocess mode, where the API's /metrics sums processes."""
    if registry not in _metrics:
        _metrics[registry] = CaptureMetrics(
            Counter("featurestore_capture_rows_sent",
                    "Sampled rows the broker acknowledged, per subject.", ["subject"],
                    registry=registry),
            Counter("featurestore_capture_rows_dropped",
                    "Sampled rows not captured, per subject and reason.", ["subject", "reason"],
                    registry=registry),
            Counter("featurestore_capture_malformed_messages",
                    "Capture messages the reader skipped as malformed, per subject.",
                    ["subject"], registry=registry),
        )
    return _metrics[registry]
