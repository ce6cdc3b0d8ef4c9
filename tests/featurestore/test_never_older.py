"""The Redis writer's never-older rule against a naive oracle, on a real Redis: random
interleavings of older, newer and equal event times, missing keys, keys Feast itself wrote, and
two writers racing on the same keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
import redis
from feast.protos.feast.types.Value_pb2 import Value
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REDIS_URL, unique_project

pytestmark = pytest.mark.redis

VIEW = "never_older"
ENTITIES = 4
_YEAR_1 = -62_135_596_800 * 1_000_000  # event times in microseconds
_YEAR_9999 = 253_402_300_799_999_999
# Where the script's fast decoding (five-byte seconds: 2^28 s to 2^35 s) starts and ends.
_FAST_FIRST, _FAST_END = 2**28 * 1_000_000, 2**35 * 1_000_000
EDGE_MICROS = [_YEAR_1, -1, 0, 1, _FAST_FIRST - 1, _FAST_FIRST, _FAST_END - 1, _FAST_END,
               1_772_000_000_000_000, 1_772_000_000_999_999, _YEAR_9999]  # fmt: skip
micros = st.one_of(st.sampled_from(EDGE_MICROS), st.integers(_YEAR_1, _YEAR_9999))
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture
def feast_view(tmp_path, redis_client):
    """A one-view Feast repo on the test Redis: (store, view definition)."""
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, Int64

    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.settings import Settings

    (tmp_path / "repo").mkdir()
    settings = Settings(
        profile="services",
        project=unique_project(),
        data_dir=tmp_path / "data",
        feature_repo=tmp_path / "repo",
        redis_url=REDIS_URL,
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
    )
    store = feature_store(settings)
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
    source = FileSource(name=f"{VIEW}_src", path=str(tmp_path / "offline"),
                        timestamp_field="event_timestamp")  # fmt: skip
    schema = [Field(name="card_id", dtype=Int64), Field(name="amount", dtype=Float64),
              Field(name="count", dtype=Int64)]  # fmt: skip
    view = FeatureView(name=VIEW, entities=[card], source=source, schema=schema,
                       ttl=timedelta(0), online=True)  # fmt: skip
    store.apply([card, source, view])
    [definition] = select_views(store, [VIEW])
    return store, definition


def _table(rows: list[tuple[int, int, int]]) -> pa.Table:
    """(entity, event time in µs, value) rows; `amount` and `count` both carry the value."""
    return pa.table(
        {
            "card_id": pa.array([e for e, _, _ in rows], pa.int64()),
            "event_timestamp": pa.array([t for _, t, _ in rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([float(v) for _, _, v in rows], pa.float64()),
            "count": pa.array([v for _, _, v in rows], pa.int64()),
        }
    )


def _writer(store, definition, client: redis.Redis | None = None):
    from featurestore.online.feast_layout import RedisLayout
    from featurestore.online.redis_writer import RedisFeatureWriter

    layout = RedisLayout(definition, store.config)
    return RedisFeatureWriter(client or redis.Redis.from_url(REDIS_URL), layout), layout


def _stored(client: redis.Redis, layout, entity: int) -> tuple[int, int] | None:
    """(event time in µs, value) stored for `entity`, decoded with Feast's protobufs."""
    [key] = layout.keys_for({"card_id": [entity]})
    stored = client.hgetall(key)
    if not stored:
        return None
    ts = Timestamp.FromString(stored[layout.ts_field])
    count = Value.FromString(stored[layout.feature_fields["count"]]).int64_val
    amount = Value.FromString(stored[layout.feature_fields["amount"]]).double_val
    assert amount == float(count)
    return ts.seconds * 1_000_000 + ts.nanos // 1_000, count


def _feast_write(store, definition, rows: list[tuple[int, int, int]]) -> None:
    """Rows written by Feast's own Redis writer (its layout, its bytes)."""
    from feast.utils import _convert_arrow_to_proto

    if not rows:
        return
    join_keys = {"card_id": ValueType.INT64}
    protos = _convert_arrow_to_proto(_table(rows), definition.feast_view, join_keys)
    store._get_provider().online_write_batch(store.config, definition.feast_view, protos, None)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=HEALTH)
@given(
    feast_rows=st.lists(st.tuples(st.integers(0, ENTITIES - 1),
                                  st.integers(1_000_000, _FAST_END).map(lambda s: s - s % 10**6),
                                  st.integers(-10, 10)),
                        max_size=ENTITIES, unique_by=lambda r: r[0]),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, ENTITIES - 1), micros, st.integers(-1000, 1000)),
                 min_size=1, max_size=6),
        max_size=5,
    ),
)  # fmt: skip
def test_a_row_is_written_exactly_when_it_is_not_older(feast_view, feast_rows, batches) -> None:
    store, definition = feast_view
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    # Feast's writer keeps whole seconds in `_ts` (its Timestamp from a datetime's seconds).
    _feast_write(store, definition, feast_rows)
    oracle = {entity: (ts, value) for entity, ts, value in feast_rows}
    writer, layout = _writer(store, definition)
    written = 0
    for batch in batches:
        written += writer.write(_table(batch))
        written += writer.flush()
        for entity, ts, value in batch:
            if entity not in oracle or ts >= oracle[entity][0]:
                oracle[entity] = (ts, value)
                written -= 1
    writer.close()
    assert written == 0, "rows reported written differ from the oracle's"
    for entity in range(ENTITIES):
        assert _stored(client, layout, entity) == oracle.get(entity), entity


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=HEALTH)
@given(
    newer_is_a=st.lists(st.booleans(), min_size=1200, max_size=1200),
    order=st.permutations(["a0", "a1", "a2", "b0", "b1", "b2"]),
)
def test_two_racing_writers_leave_the_newest_row(feast_view, newer_is_a, order) -> None:
    """Both writers send their batches before reading any reply, in a forced order per test
    case, so Redis receives commands of both for the same keys in flight at once."""
    store, definition = feast_view
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    entities = np.arange(len(newer_is_a))
    base = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    newer = np.array(newer_is_a)
    times = {"a": base + np.where(newer, 7, 3), "b": base + np.where(newer, 3, 7)}
    values = {"a": 1, "b": 2}
    writers = {name: _writer(store, definition, redis.Redis.from_url(REDIS_URL))[0]
               for name in "ab"}  # fmt: skip
    thirds = np.array_split(entities, 3)
    written = 0
    for step in order:
        name, part = step[0], int(step[1])
        rows = [(int(e), int(times[name][e]), values[name]) for e in thirds[part]]
        written += writers[name].write(_table(rows))
    written += sum(writer.flush() for writer in writers.values())
    for writer in writers.values():
        writer.close()
    # Each key got its newest row, whichever command Redis ran first.
    assert written >= len(entities)
    layout = _writer(store, definition)[1]
    for entity in (0, len(entities) // 2, len(entities) - 1, *range(0, len(entities), 97)):
        expected = (base + 7, values["a" if newer_is_a[entity] else "b"])
        assert _stored(client, layout, entity) == expected, entity
