"""The Spark backfill against a naive oracle of the window semantics, on generated data."""

from __future__ import annotations

from datetime import UTC, datetime, time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tests.featurestore import oracle, pipeline

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def built(tmp_path_factory, spark) -> pipeline.Pipeline:
    return pipeline.build(tmp_path_factory.mktemp("backfill"), cards=300)


@pytest.fixture
def settings(built, monkeypatch):
    from featurestore.settings import get_settings

    for key, value in built.env.items():
        monkeypatch.setenv(key, value)
    return get_settings()


def _sorted(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(columns).reset_index(drop=True)


@pytest.mark.parametrize("view_name", ["card_transaction_features", "merchant_transaction_features"])
def test_backfill_equals_oracle(settings, view_name) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    view = select_views(feature_store(settings), [view_name])[0]
    raw = ds.dataset(str(view.raw.path), format="parquet", partitioning="hive").to_table().to_pandas()
    start = datetime.combine(pipeline.BACKFILL_START, time(), UTC)
    end = datetime.combine(pipeline.END, time(), UTC)
    expected = oracle.feature_rows(raw, view, start, end)
    got = ds.dataset(str(view.offline.path), format="parquet", partitioning="hive").to_table().to_pandas()

    columns = [view.join_keys[0].name, "event_timestamp", *[a.name for a in view.aggregations]]
    assert len(got) == len(expected) == len(raw[(raw.event_timestamp >= start) & (raw.event_timestamp < end)])
    got, expected = _sorted(got, columns), _sorted(expected, columns)
    for agg in view.aggregations:
        if agg.function == "mean":
            np.testing.assert_allclose(got[agg.name], expected[agg.name].astype(float), rtol=0, atol=1e-9)
        else:
            assert got[agg.name].tolist() == expected[agg.name].tolist(), agg.name


def test_window_edges_and_identical_timestamps(settings) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    view = select_views(feature_store(settings), ["card_transaction_features"])[0]
    got = (
        ds.dataset(str(view.offline.path), format="parquet", partitioning="hive")
        .to_table(filter=ds.field("card_id") == pipeline.EDGE_CARD)
        .to_pandas()
        .sort_values(["event_timestamp", "card_txn_count_10m"])
    )
    # Two events at the same instant both see each other; 10 min later the first pair has left.
    assert got["card_txn_count_10m"].tolist() == [2, 2, 3, 2, 2, 2, 1]
    assert got["card_amount_sum_10m"].tolist()[:4] == [10.11, 10.11, 10.31, 100.19]
    # At +1 h the first pair leaves the hour; the two +1 h events count each other.
    assert got["card_txn_count_1h"].tolist() == [2, 2, 3, 4, 4, 4, 1]
    assert got["card_distinct_merchants_24h"].tolist() == [1, 1, 2, 3, 4, 4, 4]


def test_rerun_is_idempotent(settings) -> None:
    from featurestore.batch.backfill import backfill
    from featurestore.batch.spark import spark_session
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    view = select_views(feature_store(settings), ["merchant_transaction_features"])[0]
    features = [view.join_keys[0].name, "event_timestamp", *[a.name for a in view.aggregations]]

    def table() -> pd.DataFrame:
        frame = ds.dataset(str(view.offline.path), format="parquet", partitioning="hive").to_table().to_pandas()
        return _sorted(frame, features)

    before = table()
    backfill(lambda: spark_session(settings), [view], pipeline.BACKFILL_START, pipeline.END)
    pd.testing.assert_frame_equal(table(), before)
    assert not list(view.offline.path.glob("_*")), "staging left behind"
