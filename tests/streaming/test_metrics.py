"""The freshness histogram's bulk update is `Histogram.observe` of each value."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streaming.metrics import _FRESHNESS_BUCKETS, observe_all


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Each sample by its kind and labels (not the metric's name)."""
    return {f"{s.name.rsplit('_', 1)[-1]}{sorted(s.labels.items())}": s.value
            for metric in registry.collect() for s in metric.samples
            if not s.name.endswith("_created")}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(amounts=st.lists(st.one_of(
    st.integers(-(2**40), 2**40).map(lambda ms: ms / 1000),
    st.sampled_from([*_FRESHNESS_BUCKETS, 0.0, -0.0, 1e300, -1e300]),  # on a bound, huge
), max_size=60))
def test_observe_all_counts_as_observe_of_each_value(amounts) -> None:
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    # Names of their own: in Feast's multiprocess mode, metrics of one name share a value.
    name = f"h{uuid.uuid4().hex}"
    expected = Histogram(f"{name}_one", "h", buckets=_FRESHNESS_BUCKETS, registry=one_by_one)
    got = Histogram(f"{name}_bulk", "h", buckets=_FRESHNESS_BUCKETS, registry=bulk)
    for amount in amounts:
        expected.observe(amount)
    observe_all(got, np.asarray(amounts, dtype=np.float64))
    want, have = _samples(one_by_one), _samples(bulk)
    assert want.keys() == have.keys()
    for name, value in want.items():
        # The sum is added in another order: equal up to rounding.
        assert have[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
