"""The cold-start hand-over against the naive oracle: batch up to H, seed, stream after H."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.aggregations import WindowedAggregation
from streaming.coldstart import from_stream, in_seed
from streaming.windows import NO_WATERMARK, WindowState
from tests.featurestore.oracle import aggregate

MINUTE_US = 60_000_000
LATENESS = timedelta(minutes=5)
AGGREGATIONS = [
    WindowedAggregation(f"{function}_{window}", "amount", function, timedelta(minutes=window))
    for function in ("count", "sum", "mean", "max", "min", "count_distinct")
    for window in (10, 60)
]

amounts = st.one_of(
    st.just(math.nan), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, 0.1, 5.0])
)
events = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 180) .map(lambda m: m * MINUTE_US // 2), amounts),
    max_size=40,
)


def _oracle(keys, ts, amount, key: int, t: int, agg: WindowedAggregation) -> object:
    inside = (keys == key) & (ts > t - agg.window_us) & (ts <= t)
    return aggregate(agg.function, [None if math.isnan(v) else v for v in amount[inside]])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(events=events, data=st.data())
def test_a_seeded_state_continues_the_batch_windows(events, data) -> None:
    """Stream rows after H, from a state seeded with (H - retention, H], equal the windows
    over every event: the hand-over loses no batch event and counts none twice."""
    events = sorted(events, key=lambda e: e[1])
    keys = np.array([e[0] for e in events], dtype=np.int64)
    ts = np.array([e[1] for e in events], dtype=np.int64)
    amount = np.array([e[2] for e in events], dtype=np.float64)
    # H at an event's time (events at exactly H are batch's), or anywhere, or before them all.
    handover = data.draw(st.one_of(st.sampled_from(ts.tolist() or [0]),
                                   st.integers(-MINUTE_US, 100 * MINUTE_US)))
    state = WindowState(AGGREGATIONS, LATENESS)
    batch = ~from_stream(ts, handover)
    seed = batch & in_seed(ts, handover, state.retention_us)
    state.load(keys[seed], ts[seed], {"amount": amount[seed]}, watermark=NO_WATERMARK)
    stream = from_stream(ts, handover)
    assert not (batch & stream).any() and (batch | stream).all()
    rows = state.apply(keys[stream], ts[stream], {"amount": amount[stream]})

    assert sorted(zip(rows.keys.tolist(), rows.ts.tolist())) == sorted(
        zip(keys[stream].tolist(), ts[stream].tolist()))
    for i in range(len(rows)):
        for agg in AGGREGATIONS:
            expected = _oracle(keys, ts, amount, rows.keys[i], rows.ts[i], agg)
            got = rows.features[agg.name][i]
            if expected is None:
                assert math.isnan(got), agg.name
            else:
                assert got == expected or math.isclose(got, expected, rel_tol=1e-12), agg.name


def test_without_a_hand_over_point_the_stream_applies_everything() -> None:
    ts = np.array([np.iinfo(np.int64).min + 1, 0, np.iinfo(np.int64).max], dtype=np.int64)
    assert from_stream(ts, None).all()
    assert from_stream(ts, 0).tolist() == [False, False, True]
    assert in_seed(ts, 0, MINUTE_US).tolist() == [False, True, False]
    assert not from_stream(np.zeros(0, np.int64), 5).size
