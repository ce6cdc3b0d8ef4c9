"""Materialization into real Redis, read back through Feast's own online reader."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis

from tests.conftest import REDIS_URL, unique_project
from tests.featurestore import pipeline

pytestmark = [pytest.mark.spark, pytest.mark.redis]
CARDS = 1_200
# Where Feast's own writer puts its copy: a db no fixture uses (db 14 holds the session's served
# dataset, which must survive this module).
FEAST_COPY_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/13"


def _moment(day) -> datetime:
    return datetime.combine(day, time(), UTC)


@pytest.fixture(scope="module")
def built(tmp_path_factory, spark) -> pipeline.Pipeline:
    return pipeline.build(tmp_path_factory.mktemp("materialize"), cards=CARDS,
                          project=unique_project())


@pytest.fixture
def store(built, monkeypatch, redis_client):
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings

    for key, value in built.env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    return settings, feature_store(settings)


def _materialize(settings, store, start, end, names=None, engine="local"):
    from featurestore.definitions import select_views
    from featurestore.materialize import materialize

    views = select_views(store, names)
    return materialize(
        settings, store, [(v, _moment(start), _moment(end)) for v in views], engine=engine
    )


def _latest_offline(view) -> pd.DataFrame:
    frame = _offline_rows(view)
    order = [view.offline.timestamp_field] + (
        [view.offline.created_timestamp_column] if view.offline.created_timestamp_column else []
    )
    key = view.join_keys[0].name
    return frame.sort_values([key, *order]).groupby(key).tail(1).set_index(key)


def _offline_rows(view) -> pd.DataFrame:
    return ds.dataset(str(view.offline.path), format="parquet", partitioning="hive").to_table().to_pandas()


def _values(view) -> list[str]:
    keys = {k.name for k in view.join_keys}
    return [f.name for f in view.features if f.name not in keys]


def _online(store, view, ids) -> pd.DataFrame:
    key = view.join_keys[0].name
    refs = [f"{view.name}:{name}" for name in _values(view)]
    return store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_df().set_index(key)


def _dump(client: redis.Redis, project: str) -> dict:
    """The online hashes of `project` (a key ends with its project): keys another test or run
    leaves in the same db are not this module's."""
    return {
        key: client.hgetall(key)
        for key in client.scan_iter(match=f"*{project}".encode(), count=10_000)
    }


@pytest.mark.parametrize("view_name", ["card_transaction_features", "card_profile", "merchant_transaction_features"])
def test_feast_reads_what_we_wrote(store, view_name) -> None:
    from featurestore.definitions import select_views

    settings, feast = store
    _materialize(settings, feast, pipeline.START, pipeline.END)
    view = select_views(feast, [view_name])[0]
    expected = _latest_offline(view)
    if view_name == "card_transaction_features":
        assert len(expected) >= 1_000
    got = _online(feast, view, expected.index.tolist())
    for name in _values(view):
        pd.testing.assert_series_equal(
            got[name].loc[expected.index], expected[name], check_dtype=False, check_names=False
        )


def test_bytes_equal_feasts_own_writer(store) -> None:
    """Our Redis hashes are byte for byte those Feast's online_write_batch writes."""
    from feast.utils import _convert_arrow_to_proto

    from featurestore.definitions import select_views
    from featurestore.materialize import latest_per_entity, offline_batches, offline_files

    settings, feast = store
    start, end = _moment(pipeline.START), _moment(pipeline.END)
    _materialize(settings, feast, pipeline.START, pipeline.END, ["card_profile", "card_transaction_features"])
    ours = _dump(redis.Redis.from_url(REDIS_URL), settings.project)

    feast_db = redis.Redis.from_url(FEAST_COPY_REDIS_URL)
    try:
        config = feast.config.model_copy(deep=True)
        config.online_store.connection_string = config.online_store.connection_string.replace("db=15", "db=13")
        provider = feast._get_provider()
        for view in select_views(feast, ["card_profile", "card_transaction_features"]):
            keys = {k.name: k.dtype.to_value_type() for k in view.join_keys}
            for batch in offline_batches(view, offline_files(view, start, end), start, end, 100_000):
                rows = _convert_arrow_to_proto(latest_per_entity(batch, view), view.feast_view, keys)
                provider.online_write_batch(config, view.feast_view, rows, None)
        theirs = _dump(feast_db, settings.project)
    finally:
        for key in feast_db.scan_iter(match=f"*{settings.project}".encode(), count=10_000):
            feast_db.delete(key)
    assert len(ours) > CARDS
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == theirs[key], key


def test_rerun_is_idempotent(store, redis_client) -> None:
    settings, feast = store
    _materialize(settings, feast, pipeline.START, pipeline.END)
    before = _dump(redis_client, settings.project)
    _materialize(settings, feast, pipeline.START, pipeline.END)
    assert _dump(redis_client, settings.project) == before


def test_older_rows_never_overwrite_newer(store, redis_client) -> None:
    from featurestore.definitions import select_views

    settings, feast = store
    last_day = pipeline.END - timedelta(days=1)
    newest = _materialize(settings, feast, last_day, pipeline.END, ["card_transaction_features"])
    assert newest[0].rows_written > 0
    older = _materialize(settings, feast, pipeline.START, last_day, ["card_transaction_features"])
    view = select_views(feast, ["card_transaction_features"])[0]
    expected = _latest_offline(view)
    got = _online(feast, view, expected.index.tolist())
    assert older[0].rows_written > 0
    # Cards active on the last day keep their last-day values; the rest got their older rows.
    for name in _values(view):
        assert got[name].loc[expected.index].tolist() == expected[name].tolist()


def test_incremental_starts_where_the_last_run_ended(store, redis_client) -> None:
    from featurestore.definitions import select_views
    from featurestore.materialize import incremental_start

    settings, feast = store
    _materialize(settings, feast, pipeline.START, pipeline.END, ["card_profile"])
    view = select_views(feast, ["card_profile"])[0]
    later = _moment(pipeline.END) + timedelta(days=5)
    # Not `later - ttl`: the recorded end of the last run.
    assert incremental_start(view, later) == _moment(pipeline.END)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Issue 12's case: the offset-local date is the day before the UTC one.
        ("2026-03-02T20:00:00-05:00", "2026-03-02T23:59:00-05:00"),
        # The other way round: the offset-local date is the day after.
        ("2026-03-03T10:00:00+14:00", "2026-03-03T23:00:00+14:00"),
        # The whole datetime range: the partitions there are read, no day is walked.
        ("0001-01-01", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_cli_times_with_an_offset_read_the_utc_days(store, redis_client, start, end) -> None:
    from typer.testing import CliRunner

    from featurestore.cli import app
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.timestamps import to_utc

    settings, feast = store
    view = select_views(feast, ["card_transaction_features"])[0]
    utc_start, utc_end = (to_utc(datetime.fromisoformat(t)) for t in (start, end))
    offline = _offline_rows(view)
    in_range = offline[(offline.event_timestamp >= utc_start) & (offline.event_timestamp < utc_end)]
    assert len(in_range) > 0
    result = CliRunner().invoke(
        app, ["materialize", "--start", start, "--end", end, "--view", view.name]
    )
    assert result.exit_code == 0, result.output
    assert f"read {len(in_range):,} rows" in result.output
    expected = in_range.sort_values("event_timestamp").groupby("card_id").tail(1).set_index("card_id")
    got = _online(feast, view, expected.index.tolist())
    for name in _values(view):
        assert got[name].loc[expected.index].tolist() == expected[name].tolist(), name
    recorded = select_views(feature_store(settings), [view.name])[0].feast_view
    assert recorded.materialization_intervals[-1] == (utc_start, utc_end)


@pytest.mark.heavy  # ~25 s on the shared machine: the executors' Python workers import Feast
def test_the_spark_engine_writes_the_local_engines_hashes(store, redis_client) -> None:
    """Every view, key by key and field by field, and the same rows read and recorded interval
    (the ride-hailing repo's parity, in test_materialize_spark.py, runs in make test)."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    settings, feast = store
    local = _materialize(settings, feast, pipeline.START, pipeline.END)
    expected = _dump(redis_client, settings.project)
    redis_client.delete(*expected)
    spark = _materialize(settings, feast, pipeline.START, pipeline.END, engine="spark")
    assert len(expected) > CARDS
    assert _dump(redis_client, settings.project) == expected
    # Rows written (not skipped as older) depend on the order the tasks ran in; rows read not.
    assert [(r.view, r.rows_read) for r in spark] == [(r.view, r.rows_read) for r in local]
    assert sum(r.rows_written for r in spark) >= len(expected)
    for view in select_views(feature_store(settings), None):
        assert view.feast_view.materialization_intervals[-1] == (
            _moment(pipeline.START), _moment(pipeline.END)
        ), view.name


def test_an_unknown_engine_is_named_with_the_allowed_ones(store) -> None:
    from typer.testing import CliRunner

    from featurestore.cli import app

    result = CliRunner().invoke(
        app, ["materialize", "--start", str(pipeline.START), "--engine", "flink"]
    )
    assert result.exit_code == 2
    assert "engine must be one of ['local', 'spark'], got 'flink'" in result.output
