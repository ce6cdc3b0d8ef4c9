"""The worker's freshness histogram observed a batch at a time equals observing each value."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streaming.metrics import _FRESHNESS_BUCKETS, observe_many

NAME = "latency_seconds"


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram(NAME, "test", buckets=_FRESHNESS_BUCKETS, registry=registry)


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")
    }


# Latencies in ms as the worker computes them (int64): negative under clock skew, on bucket
# bounds exactly, and huge.
latencies = st.lists(
    st.one_of(
        st.integers(-(2**62), 2**62),
        st.sampled_from([int(b * 1000) for b in _FRESHNESS_BUCKETS]),
        st.integers(-5, 70_000),
    ),
    max_size=200,
)


@given(latencies)
def test_observe_many_equals_one_observe_per_value(values: list[int]) -> None:
    ms = np.array(values, dtype=np.int64)
    batched, histogram = _histogram()
    observe_many(histogram, ms / 1000)
    oracle, each = _histogram()
    for value in ms:  # numpy's int64 / 1000, as the worker divided each value before
        each.observe(value / 1000)
    ours, theirs = _samples(batched), _samples(oracle)
    sums = f"{NAME}_sum[]"
    # Float sums in another order: equal up to rounding, which scales with the magnitudes.
    scale = float(np.abs(ms / 1000).sum())
    assert math.isclose(ours.pop(sums), theirs.pop(sums), rel_tol=0, abs_tol=1e-12 * scale + 1e-9)
    assert ours == theirs
