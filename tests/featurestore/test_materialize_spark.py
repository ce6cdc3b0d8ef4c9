"""`materialize --engine spark` on a user's own repo (tests/repos/ride_hailing: string rider keys,
integer driver keys, a string feature), against the local engine and a naive newest-row oracle.

The offline files are written here so that each entity's rows are spread over days, over two
files of a day and over many row groups, the newer rows of a day in the file read first: the
tasks meet an entity's rows in every order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.conftest import REDIS_URL
from tests.ride_repo import ride_env

pytestmark = [pytest.mark.redis]
DAYS = [datetime(2026, 11, d, tzinfo=UTC) for d in (2, 3, 4)]
TIMESTAMP = pa.timestamp("us", tz="UTC")
DRIVERS = list(range(100, 130))
RIDERS = [f"r-{i:03d}" for i in range(40)]
ROWS_A_DAY = 200
ROW_GROUP = 16


@pytest.fixture(scope="module")
def ride(tmp_path_factory) -> dict[str, str]:
    """The ride-hailing repo applied to a registry of its own; its settings' environment."""
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    env = ride_env(tmp_path_factory.mktemp("ride"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        apply(get_settings())
    return env


@pytest.fixture
def ride_store(ride, monkeypatch, redis_client):
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings

    for key, value in ride.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    return settings, feature_store(settings)


def _view(store, name: str):
    from featurestore.definitions import select_views

    return select_views(store, [name])[0]


def _write_spread(directory, rows: pa.Table, day: datetime, rng: np.random.Generator) -> None:
    """A day's rows as two files in small row groups, rows shuffled: the later half of each
    entity's rows (by event time) in part-0, which sorts first, the earlier in part-1."""
    partition = directory / f"event_date={day.date().isoformat()}"
    partition.mkdir(parents=True, exist_ok=True)
    times = rows.column("event_timestamp").cast(pa.int64()).to_numpy()
    newer = times >= np.median(times)
    for name, keep in (("part-0", newer), ("part-1", ~newer)):
        part = rows.filter(pa.array(keep))
        part = part.take(pa.array(rng.permutation(part.num_rows)))
        pq.write_table(part, partition / f"{name}.parquet", row_group_size=ROW_GROUP)


def _ride_offline(store, seed: int = 3) -> None:
    """Driver profiles and rider trip aggregates for DAYS, at distinct times per entity."""
    rng = np.random.default_rng(seed)
    profiles, trips = _view(store, "driver_profile"), _view(store, "rider_trips")
    for day in DAYS:
        micros = rng.choice(86_400 * 10**6, ROWS_A_DAY, replace=False)
        times = pa.array([day + timedelta(microseconds=int(m)) for m in micros], TIMESTAMP)
        _write_spread(profiles.offline.path, pa.table({
            "driver_id": pa.array(rng.choice(DRIVERS, ROWS_A_DAY), pa.int64()),
            "rating": np.round(rng.uniform(3.5, 5.0, ROWS_A_DAY), 2),
            "seats": pa.array(rng.choice([4, 6], ROWS_A_DAY), pa.int64()),
            "city": pa.array(rng.choice(["lisbon", "porto", "faro", None], ROWS_A_DAY)),
            "event_timestamp": times,
        }), day, rng)  # fmt: skip
        _write_spread(trips.offline.path, pa.table({
            "rider_id": pa.array(rng.choice(RIDERS, ROWS_A_DAY)),
            "event_timestamp": times,
            "created": pa.array([t.as_py() + timedelta(seconds=5) for t in times], TIMESTAMP),
            "rider_trips_24h": pa.array(rng.integers(1, 30, ROWS_A_DAY), pa.int64()),
            "rider_fare_max_24h": rng.uniform(4.0, 60.0, ROWS_A_DAY),
            "rider_distance_mean_24h": rng.uniform(0.5, 25.0, ROWS_A_DAY),
        }), day, rng)  # fmt: skip


def _dump(client: redis.Redis, project: str) -> dict:
    return {key: client.hgetall(key) for key in client.scan_iter(match=f"*{project}".encode())}


@pytest.mark.spark
def test_spark_equals_local_on_an_own_repo_with_string_keys(ride_store, redis_client, spark):
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize
    from featurestore.materialize_spark import work_units

    settings, store = ride_store
    _ride_offline(store)
    # Partial first and last days: the range cuts through row groups.
    start, end = DAYS[0] + timedelta(hours=6), DAYS[-1] + timedelta(hours=18)
    views = select_views(store, ["driver_profile", "rider_trips"])
    ranges = [(v, start, end) for v in views]
    local = materialize(settings, store, ranges)
    expected = _dump(redis_client, settings.project)
    assert len(expected) == len(DRIVERS) + len(RIDERS)
    redis_client.delete(*expected)

    later_end = end + timedelta(minutes=1)  # the Spark run's own interval in the registry
    spark_run = materialize(settings, store, [(v, start, later_end) for v in views],
                            engine="spark")  # fmt: skip
    assert _dump(redis_client, settings.project) == expected
    assert [r.rows_read for r in spark_run] == [r.rows_read for r in local]
    for view in views:  # more row groups than the 4 tasks of local[2]: every task has some
        files = sorted(view.offline.path.glob("*/*.parquet"))
        assert len(work_units(view, files, start, end)) > 8
    for view in select_views(feature_store(settings), [v.name for v in views]):
        assert view.feast_view.materialization_intervals[-1] == (start, later_end)


rows_strategy = st.lists(
    st.tuples(st.sampled_from(DRIVERS[:5]), st.integers(0, 3 * 86_400 * 10**6 - 1)),
    min_size=1, max_size=60, unique=True,  # distinct times per driver: a tie of two rows at
)  # one instant goes to the one written last, which the engines may order apart


@pytest.fixture(scope="module")
def ride_layout(ride):
    """(settings, store, the driver_profile view's layout) of the ride repo."""
    from featurestore.feast_config import feature_store
    from featurestore.online.feast_layout import RedisLayout
    from featurestore.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        for key, value in ride.items():
            patch.setenv(key, value)
        settings = get_settings()
    store = feature_store(settings)
    return settings, store, RedisLayout(_view(store, "driver_profile"), store.config)


@hypothesis_settings(max_examples=25)
@given(rows=rows_strategy, files=st.integers(1, 4), group=st.integers(1, 8), order=st.randoms())
def test_tasks_in_any_order_leave_each_entitys_newest_row(
    ride_layout, tmp_path_factory, rows, files, group, order
) -> None:
    """An executor task's work (`write_units`) run on the row groups in a drawn order, in
    one task or one per row group, against a naive oracle: each driver's newest row."""
    from featurestore.materialize_spark import work_units, write_units

    settings, store, layout = ride_layout
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"*{settings.project}".encode()):
        client.delete(key)
    start = DAYS[0]
    table = pa.table({
        "driver_id": pa.array([d for d, _ in rows], pa.int64()),
        "rating": pa.array([float(i) for i in range(len(rows))]),  # the row's identity
        "seats": pa.array([4] * len(rows), pa.int64()),
        "city": pa.array(["faro"] * len(rows)),
        "event_timestamp": pa.array([start + timedelta(microseconds=m) for _, m in rows],
                                    TIMESTAMP),
    })  # fmt: skip
    directory = tmp_path_factory.mktemp("drawn")
    paths = []
    for i, indices in enumerate(np.array_split(np.arange(len(rows)), files)):
        if len(indices):
            paths.append(directory / f"part-{i}.parquet")
            pq.write_table(table.take(pa.array(indices)), paths[-1], row_group_size=group)
    end = start + timedelta(days=3)
    units = work_units(layout.view, paths, start, end)
    order.shuffle(units)
    if order.random() < 0.5:
        write_units(settings, layout, start, end, iter(units))
    else:
        for unit in units:
            write_units(settings, layout, start, end, iter([unit]))

    newest: dict[int, tuple[int, float]] = {}
    for i, (driver, micros) in enumerate(rows):
        if driver not in newest or micros > newest[driver][0]:
            newest[driver] = (micros, float(i))
    drivers = sorted(newest)
    read = store.get_online_features(
        features=["driver_profile:rating"], entity_rows=[{"driver_id": d} for d in drivers]
    ).to_dict()
    assert read["rating"] == [newest[d][1] for d in drivers]


def test_the_spark_engine_refuses_an_online_store_other_than_redis(configure) -> None:
    from featurestore.errors import FeatureStoreError
    from featurestore.materialize import check_engine

    with pytest.raises(FeatureStoreError, match="--engine spark writes to Redis; this "
                       "profile's online store is 'sqlite'"):  # fmt: skip
        check_engine(configure(), "spark")
    with pytest.raises(FeatureStoreError, match=r"one of \['local', 'spark'\], got 'Spark'"):
        check_engine(configure(), "Spark")
