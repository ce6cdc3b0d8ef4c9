"""The incremental window state against the naive oracle, whatever the arrival order."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from streaming.windows import WindowState
from tests.featurestore import oracle, pipeline

LATENESS = timedelta(minutes=5)


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> pd.DataFrame:
    from featurestore.generator import GeneratorConfig, generate

    raw_dir = tmp_path_factory.mktemp("windows")
    generate(GeneratorConfig(start=pipeline.START, days=2, cards=80, merchants=15, seed=3), raw_dir)
    table = ds.dataset(str(raw_dir / "transactions"), format="parquet", partitioning="hive").to_table()
    table = pa.concat_tables([table.drop_columns(["event_date"]), pipeline.edge_events()])
    return table.to_pandas()


@pytest.fixture
def views(configure):
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply

    return select_views(apply(configure()), None, aggregated_only=True)


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
