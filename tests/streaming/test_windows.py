"""The incremental window state against the naive oracle, whatever the arrival order."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.aggregations import WindowedAggregation
from streaming.windows import WindowState, _runs
from tests.featurestore import oracle, pipeline

LATENESS = timedelta(minutes=5)


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> pd.DataFrame:
    from fraud_example.generator import GeneratorConfig, generate

    raw_dir = tmp_path_factory.mktemp("windows")
    generate(GeneratorConfig(start=pipeline.START, days=2, cards=80, merchants=15, seed=3), raw_dir)
    table = ds.dataset(str(raw_dir / "transactions"), format="parquet", partitioning="hive").to_table()
    table = pa.concat_tables([table.drop_columns(["event_date"]), pipeline.edge_events()])
    return table.to_pandas()


@pytest.fixture
def views(example_store):
    from featurestore.definitions import select_views

    return select_views(example_store, None, aggregated_only=True)


def _arrival_order(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Event-time order disturbed by up to LATENESS, as a partition of a topic would deliver."""
    rng = np.random.default_rng(seed)
    jitter = rng.integers(0, LATENESS // timedelta(microseconds=1), len(frame))
    arrival = _micros(frame["event_timestamp"]) + jitter
    return frame.iloc[np.argsort(arrival, kind="stable")].reset_index(drop=True)


def _micros(times: pd.Series) -> np.ndarray:
    return pd.to_datetime(times, utc=True).dt.as_unit("us").astype("int64").to_numpy()


def _stream(state: WindowState, frame: pd.DataFrame, key: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    micros = _micros(frame["event_timestamp"])
    emitted, start = [], 0
    while start < len(frame):
        end = start + int(rng.integers(1, 400))
        rows = state.apply(
            frame[key].to_numpy()[start:end],
            micros[start:end],
            {c: frame[c].to_numpy()[start:end] for c in state.columns},
        )
        emitted.append(pd.DataFrame({key: rows.keys, "ts": rows.ts, **rows.features}))
        start = end
    out = pd.concat(emitted, ignore_index=True)
    # The newest row per (key, event time) is the row the store ends up with.
    return out.groupby([key, "ts"], as_index=False).last()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("view_name", ["card_transaction_features", "merchant_transaction_features"])
def test_stream_rows_equal_oracle(events, views, view_name, seed) -> None:
    view = next(v for v in views if v.name == view_name)
    key = view.join_keys[0].name
    state = WindowState(view.aggregations, LATENESS)
    got = _stream(state, _arrival_order(events, seed), key, seed)

    start = datetime.combine(pipeline.START, time(), UTC)
    expected = oracle.feature_rows(events, view, start, start + timedelta(days=3))
    expected["ts"] = _micros(expected["event_timestamp"])
    expected = expected.groupby([key, "ts"], as_index=False).last()

    assert len(got) == len(expected)
    got = got.sort_values([key, "ts"]).reset_index(drop=True)
    expected = expected.sort_values([key, "ts"]).reset_index(drop=True)
    assert got[key].tolist() == expected[key].tolist() and got.ts.tolist() == expected.ts.tolist()
    for agg in view.aggregations:
        want = expected[agg.name].astype(float).to_numpy()
        have = got[agg.name].astype(float).to_numpy()
        if agg.function == "mean":
            np.testing.assert_allclose(have, want, rtol=0, atol=1e-9, err_msg=agg.name)
        else:
            np.testing.assert_array_equal(have, want, err_msg=agg.name)


def test_in_order_events_emit_one_row_each(views) -> None:
    view = next(v for v in views if v.name == "card_transaction_features")
    state = WindowState(view.aggregations, LATENESS)
    ts = np.arange(10, dtype=np.int64) * 60_000_000
    rows = state.apply(np.ones(10, dtype=np.int64), ts, {"amount": np.full(10, 2.5), "merchant_id": np.arange(10)})
    assert rows.ts.tolist() == ts.tolist()
    assert rows.features["card_txn_count_10m"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    later = state.apply(np.ones(1, dtype=np.int64), ts[-1:] + 1, {"amount": np.array([1.0]), "merchant_id": np.array([0])})
    # Minute 0 is still inside the 10 minutes ending at 9 min + 1 µs: all ten and the new one.
    assert len(later) == 1 and later.features["card_txn_count_10m"].tolist() == [11]


def test_state_keeps_only_the_window_and_lateness(views) -> None:
    view = next(v for v in views if v.name == "card_transaction_features")
    state = WindowState(view.aggregations, LATENESS)
    hour = 3_600_000_000
    ts = np.arange(0, 72 * hour, hour // 4, dtype=np.int64)
    n = len(ts)
    state.apply(np.zeros(n, dtype=np.int64), ts, {"amount": np.ones(n), "merchant_id": np.arange(n)})
    retained = (24 * hour + LATENESS // timedelta(microseconds=1)) // (hour // 4) + 1
    assert state.events(0) <= retained < n


def test_events_later_than_the_allowed_lateness_are_refused(views) -> None:
    view = next(v for v in views if v.name == "card_transaction_features")
    state = WindowState(view.aggregations, LATENESS)
    late_us = LATENESS // timedelta(microseconds=1)
    state.apply(np.array([1]), np.array([10 * late_us]), {"amount": np.array([1.0]), "merchant_id": np.array([1])})
    assert state.too_late_before() == 9 * late_us
    # Another key, just inside the lateness: accepted.
    state.apply(np.array([2]), np.array([9 * late_us]), {"amount": np.array([1.0]), "merchant_id": np.array([1])})
    with pytest.raises(ValueError, match="1 event"):
        state.apply(np.array([3]), np.array([9 * late_us - 1]), {"amount": np.array([1.0]), "merchant_id": np.array([1])})


def test_idle_keys_do_not_keep_old_events(views) -> None:
    view = next(v for v in views if v.name == "card_transaction_features")
    state = WindowState(view.aggregations, LATENESS)
    day = 86_400_000_000
    state.apply(np.array([1]), np.array([0]), {"amount": np.array([1.0]), "merchant_id": np.array([1])})
    state.apply(np.array([2]), np.array([3 * day]), {"amount": np.array([1.0]), "merchant_id": np.array([1])})
    assert state.events(1) == 0 and state.events(2) == 1


# --- property: any event times the validator accepts, incl. years 1 and 9999 ----------------

_YEAR_1 = (datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    microseconds=1
)
_YEAR_9999_END = (
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
) // timedelta(microseconds=1)
_AGGREGATIONS = [
    WindowedAggregation(f"{function}_{label}", column, function, window)
    for label, window in (("10m", timedelta(minutes=10)), ("1d", timedelta(days=1)),
                          ("all", timedelta.max))
    for function, column in (("count", "amount"), ("sum", "amount"), ("mean", "amount"),
                             ("max", "amount"), ("min", "amount"),
                             ("count_distinct", "merchant_id"))
]
_MINUTE = 60_000_000
_TIMES = st.one_of(
    st.integers(_YEAR_1, _YEAR_9999_END),
    st.sampled_from([_YEAR_1, _YEAR_1 + 1, _YEAR_9999_END, _YEAR_9999_END - 1, 0, -1]),
    # Clusters, so windows hold several events and edges (exactly 10 min apart) occur.
    st.integers(0, 30).map(lambda m: 1_772_000_000_000_000 + m * _MINUTE),
    st.integers(0, 30).map(lambda m: _YEAR_1 + m * _MINUTE),
)
_EVENTS = st.lists(
    st.tuples(st.one_of(st.integers(0, 3), st.integers(0, 40)), _TIMES,
              st.one_of(st.floats(0, 1_000_000), st.just(float("nan"))), st.integers(0, 3)),
    max_size=40,
)


def _oracle_rows(events: list[tuple[int, int, float, int]]) -> dict[tuple[int, int], dict]:
    """Every (key, event time) with its aggregations over (t - w, t], straight from the rule."""
    rows = {}
    for key, t, _, _ in events:
        mine = [e for e in events if e[0] == key]
        row = {}
        for agg in _AGGREGATIONS:
            w = agg.window // timedelta(microseconds=1)
            inside = [e for e in mine if t - w < e[1] <= t]
            values = [e[2] if agg.column == "amount" else e[3] for e in inside]
            row[agg.name] = oracle.aggregate(agg.function, values)
        rows[key, t] = row
    return rows


def _streamed_rows(state: WindowState, events: list, cuts: list[int], text: bool = False) -> dict:
    """`text`: string entity keys and string merchants (object arrays), as a user's repo has."""
    got: dict[tuple[int, int], dict] = {}
    begin = 0
    for size in [*cuts, len(events)]:
        chunk = events[begin : begin + size]
        begin += size
        if not chunk:
            continue
        keys, ts, amounts, merchants = (np.array(c) for c in zip(*chunk))
        keys = keys.astype(np.int64)
        if text:
            keys = np.array([f"key-{k}" for k in keys], dtype=object)
            merchants = np.array([f"m{m}" for m in merchants], dtype=object)
        rows = state.apply(keys, ts.astype(np.int64),
                           {"amount": amounts.astype(float), "merchant_id": merchants})
        for i in range(len(rows)):
            key = int(rows.keys[i][4:]) if text else int(rows.keys[i])
            got[key, int(rows.ts[i])] = {
                name: values[i].item() for name, values in rows.features.items()
            }
    return got


def _assert_rows_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for at, row in expected.items():
        for name, want in row.items():
            have = got[at][name]
            if want is None:
                assert math.isnan(have), (at, name, have)  # an empty window
            elif name.startswith("mean"):
                assert have == pytest.approx(want, rel=1e-12, abs=1e-9), (at, name)
            else:
                assert have == want, (at, name, have, want)


def test_year_1_and_9999_events_do_not_corrupt_other_keys() -> None:
    """Defect: `segment * span` overflowed int64 with a year-1 or year-9999 event in a batch
    (24 h counts below 1, negative counts for other cards)."""
    events = [(k, 1_772_000_000_000_000 + k * _MINUTE, 1.0, k) for k in range(2, 40)] * 2
    events += [(0, _YEAR_1, 2.0, 0), (1, _YEAR_9999_END, 3.0, 1)]
    state = WindowState(_AGGREGATIONS[:12], lateness=timedelta(days=3_700_000))
    got = _streamed_rows(state, events, [])
    expected = {at: {n: v for n, v in row.items() if not n.endswith("_all")}
                for at, row in _oracle_rows(events).items()}
    _assert_rows_equal(got, expected)
    assert {row["count_1d"] for row in got.values()} == {1, 2}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(events=_EVENTS, cuts=st.lists(st.integers(1, 40), max_size=5))
def test_windows_equal_the_oracle_on_any_event_times(events, cuts) -> None:
    # A lateness beyond any two event times apart (clamped inside): every arrival order is on
    # time, so every event is applied.
    state = WindowState(_AGGREGATIONS, lateness=timedelta.max)
    _assert_rows_equal(_streamed_rows(state, events, cuts), _oracle_rows(events))


def _assert_evicting_state_equals_the_oracle(events, cuts, text: bool = False) -> None:
    state = WindowState(_AGGREGATIONS[:6] + _AGGREGATIONS[6:12], lateness=timedelta(minutes=5))
    ordered = sorted(events, key=lambda e: e[1])
    expected = _oracle_rows(ordered)
    expected = {at: {n: row[n] for n in row if not n.endswith("_all")} for at, row in expected.items()}
    _assert_rows_equal(_streamed_rows(state, ordered, cuts, text=text), expected)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(events=_EVENTS, cuts=st.lists(st.integers(1, 40), max_size=5))
def test_windows_with_eviction_equal_the_oracle_on_ordered_event_times(events, cuts) -> None:
    _assert_evicting_state_equals_the_oracle(events, cuts)


@given(
    state=st.lists(st.integers(-3, 30), max_size=60),
    batch=st.lists(st.integers(-5, 35), min_size=1, max_size=10),
)
def test_the_runs_of_a_batchs_keys_are_exactly_their_positions_in_the_state(state, batch) -> None:
    """`apply` computes a batch on its keys' runs only: they must be every position of those
    keys in the sorted state, and nothing else."""
    codes = np.sort(np.array(state, dtype=np.int64))
    wanted = np.unique(np.array(batch, dtype=np.int64))
    assert _runs(codes, wanted).tolist() == np.flatnonzero(np.isin(codes, wanted)).tolist()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(events=_EVENTS, cuts=st.lists(st.integers(1, 40), max_size=5))
def test_windows_on_text_keys_equal_the_oracle(events, cuts) -> None:
    """String keys go through the state's key codes, string values through object arrays."""
    _assert_evicting_state_equals_the_oracle(events, cuts, text=True)
