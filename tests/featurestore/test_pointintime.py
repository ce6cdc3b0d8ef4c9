"""Point-in-time semantics against a naive oracle that reads the definition row by row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from featurestore import pointintime
from tests.featurestore.oracle import naive_latest

BASE = datetime(2026, 3, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")


@dataclass
class Case:
    entity_keys: list[tuple]
    entity_times: pa.Array
    row_keys: list[tuple]
    row_times: pa.Array
    row_created: pa.Array | None
    ttl: timedelta

    def ours(self) -> list[int]:
        entity_columns = _columns(self.entity_keys)
        row_columns = _columns(self.row_keys)
        unit = self.row_times.type.unit
        lower, upper = pointintime.bounds(self.entity_times, self.ttl, unit)
        ts, valid = pointintime.timestamp_ints(self.row_times)
        created = None
        if self.row_created is not None:
            created_ints, created_valid = pointintime.timestamp_ints(self.row_created)
            created = np.where(created_valid, created_ints, pointintime.INT64_MIN)
        index = pointintime.AsOfIndex(row_columns, ts, created, valid)
        return index.lookup(entity_columns, lower, upper).tolist()

    def oracle(self) -> list[int]:
        created = (
            _nanos(self.row_created)
            if self.row_created is not None
            else [None] * len(self.row_keys)
        )
        return naive_latest(
            self.entity_keys,
            _nanos(self.entity_times),
            self.row_keys,
            _nanos(self.row_times),
            created,
            self.ttl,
        )


def _columns(keys: list[tuple]) -> list[pa.Array]:
    width = len(keys[0]) if keys else 1
    return [pa.array([k[i] for k in keys]) for i in range(width)]


def _nanos(times: pa.Array) -> list[int | None]:
    unit = pointintime._NS_PER_UNIT[times.type.unit]
    return [None if v is None else v * unit for v in times.cast(pa.int64()).to_pylist()]


def _times(rng: np.random.Generator, n: int, ticks: int, tick: timedelta, unit: str = "us"):
    offsets = rng.integers(0, ticks, n) * (tick // timedelta(microseconds=1))
    values = [BASE + timedelta(microseconds=int(o)) for o in offsets]
    return pa.array(values, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz="UTC"))


def _generated(seed: int, *, keys: int = 6, rows: int = 400, entities: int = 300) -> Case:
    """Coarse times (many same-ts ties), few created times (ties on both), some null created."""
    rng = np.random.default_rng(seed)
    tick = timedelta(minutes=30)
    row_times = _times(rng, rows, 48 * 3, tick)
    created = _times(rng, rows, 4, timedelta(hours=1))
    created = pa.array(created.to_pylist(), US, mask=rng.random(rows) < 0.1)
    # Entity times on the same grid (exact hits and exact ttl edges) and between ticks.
    entity_times = _times(rng, entities, 48 * 4, tick / 2)
    return Case(
        entity_keys=[(int(k),) for k in rng.integers(0, keys + 2, entities)],  # 2 unknown keys
        entity_times=entity_times,
        row_keys=[(int(k),) for k in rng.integers(0, keys, rows)],
        row_times=row_times,
        row_created=created,
        ttl=timedelta(hours=6),
    )


@pytest.mark.parametrize("created", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_generated_data_matches_the_oracle(seed: int, created: bool) -> None:
    case = _generated(seed)
    if not created:  # ties on ts are then decided by position alone
        case.row_created = None
    expected = case.oracle()
    assert case.ours() == expected
    # The data exercises what it is meant to: matches, misses, and ties decided by created.
    assert sum(e >= 0 for e in expected) > 50 and sum(e < 0 for e in expected) > 20


def test_ttl_edges_are_inclusive_and_future_rows_never_match() -> None:
    t = BASE + timedelta(days=1)
    ttl = timedelta(hours=2)
    row_times = [t - ttl, t - ttl - timedelta(microseconds=1), t, t + timedelta(microseconds=1)]
    case = Case(
        entity_keys=[(1,), (2,), (3,), (4,), (3,)],
        entity_times=pa.array([t, t, t, t, t - timedelta(microseconds=1)], US),
        row_keys=[(1,), (2,), (3,), (4,)],
        row_times=pa.array(row_times, US),
        row_created=None,
        ttl=ttl,
    )
    # Exactly t - ttl is in, one microsecond older is out, exactly t is in, later is out.
    assert case.ours() == case.oracle() == [0, -1, 2, -1, -1]


def test_same_time_ties_go_to_the_greatest_created_time() -> None:
    t = BASE
    created = [BASE, None, BASE + timedelta(seconds=5), BASE + timedelta(seconds=1)]
    case = Case(
        entity_keys=[(7,), (8,)],
        entity_times=pa.array([t, t], US),
        row_keys=[(7,), (7,), (7,), (7,), (8,), (8,)],
        row_times=pa.array([t] * 6, US),
        row_created=pa.array([*created, None, None], US),
        ttl=timedelta(days=1),
    )
    # Key 8: equal in time and (null) created time, so the later row wins.
    assert case.ours() == case.oracle() == [2, 5]


def test_entities_without_history_or_before_every_row_get_no_match() -> None:
    case = Case(
        entity_keys=[(1,), (99,), (1,)],
        entity_times=pa.array([BASE - timedelta(days=3), BASE, BASE + timedelta(hours=1)], US),
        row_keys=[(1,), (1,)],
        row_times=pa.array([BASE, BASE + timedelta(minutes=1)], US),
        row_created=None,
        ttl=timedelta(days=1),
    )
    assert case.ours() == case.oracle() == [-1, -1, 1]


def test_zero_ttl_means_no_lower_bound() -> None:
    case = Case(
        entity_keys=[(1,), (1,)],
        entity_times=pa.array([BASE + timedelta(days=3_000), BASE - timedelta(days=1)], US),
        row_keys=[(1,)],
        row_times=pa.array([BASE], US),
        row_created=None,
        ttl=timedelta(0),
    )
    assert case.ours() == case.oracle() == [0, -1]


def test_entity_times_finer_than_the_rows_are_exact() -> None:
    """Nanosecond entity times against microsecond rows: no rounding admits a wrong row."""
    t_ns = int(BASE.timestamp()) * 10**9 + 1_500  # 1.5 µs after BASE
    ttl = timedelta(hours=1)
    row_us = [int(BASE.timestamp()) * 10**6 + d for d in (0, 1, 2)]
    edge_us = (t_ns - ttl // timedelta(microseconds=1) * 1_000) / 1_000  # t - ttl = x.5 µs
    row_us += [int(edge_us), int(edge_us) + 1]
    case = Case(
        entity_keys=[(1,), (2,)],
        entity_times=pa.array([t_ns, t_ns], pa.timestamp("ns", tz="UTC")),
        row_keys=[(1,), (1,), (1,), (2,), (2,)],
        row_times=pa.array(row_us, US),
        row_created=None,
        ttl=ttl,
    )
    # Key 1: 2 µs is in the future of 1.5 µs. Key 2: the row half a µs before t - ttl is out.
    assert case.ours() == case.oracle() == [1, 4]


def test_null_keys_and_times_never_match() -> None:
    case = Case(
        entity_keys=[(1,), (None,), (2,)],
        entity_times=pa.array([BASE] * 3, US),
        row_keys=[(1,), (None,), (2,)],
        row_times=pa.array([BASE, BASE, None], US),
        row_created=None,
        ttl=timedelta(days=1),
    )
    assert case.ours() == case.oracle() == [0, -1, -1]


def test_composite_keys_of_several_columns() -> None:
    rng = np.random.default_rng(5)
    rows, entities = 500, 400
    case = _generated(5, rows=rows, entities=entities)
    countries = ["DE", "FR", "US", None]
    case.row_keys = [(k, countries[i]) for (k,), i in zip(case.row_keys, rng.integers(0, 3, rows))]
    case.entity_keys = [
        (k, countries[i]) for (k,), i in zip(case.entity_keys, rng.integers(0, 4, entities))
    ]
    expected = case.oracle()
    assert case.ours() == expected
    assert sum(e >= 0 for e in expected) > 30


def test_times_too_wide_for_a_composite_key_use_ranks() -> None:
    """Centuries of microseconds times many keys overflow int64 composites: ranks take over."""
    rng = np.random.default_rng(9)
    rows, entities, keys = 3_000, 1_000, 2_000
    seconds = rng.integers(-(300 * 365 * 86_400), 300 * 365 * 86_400, rows)
    row_us = seconds * 1_000_000 + rng.integers(0, 1_000_000, rows)
    picked = rng.integers(0, rows, entities)
    entity_us = row_us[picked] + rng.integers(-2, 3, entities) * 10**6
    row_keys = rng.integers(0, keys, rows)
    ts = np.asarray(row_us, dtype=np.int64)
    assert pointintime._TimeAxis.of(ts, keys).distinct is not None, "expected the rank axis"
    case = Case(
        entity_keys=[(int(row_keys[p]),) for p in picked],
        entity_times=pa.array(entity_us, US),
        row_keys=[(int(k),) for k in row_keys],
        row_times=pa.array(row_us, US),
        row_created=None,
        ttl=timedelta(days=365 * 1_000),
    )
    expected = case.oracle()
    assert case.ours() == expected
    assert sum(e >= 0 for e in expected) > entities // 2


def test_string_keys() -> None:
    case = _generated(3)
    case.row_keys = [(f"card-{k}",) for (k,) in case.row_keys]
    case.entity_keys = [(f"card-{k}",) for (k,) in case.entity_keys]
    expected = case.oracle()
    assert case.ours() == expected
    assert sum(e >= 0 for e in expected) > 50


def test_lookups_in_batches_equal_one_lookup() -> None:
    case = _generated(11, rows=2_000, entities=1_000)
    lower, upper = pointintime.bounds(case.entity_times, case.ttl, "us")
    ts, valid = pointintime.timestamp_ints(case.row_times)
    index = pointintime.AsOfIndex(_columns(case.row_keys), ts, None, valid)
    keys = _columns(case.entity_keys)
    whole = index.lookup(keys, lower, upper)
    parts = [
        index.lookup([k.slice(i, 300) for k in keys], lower[i : i + 300], upper[i : i + 300])
        for i in range(0, len(upper), 300)
    ]
    assert np.concatenate(parts).tolist() == whole.tolist()


def test_empty_inputs() -> None:
    assert (
        pointintime.AsOfIndex([pa.array([1])], np.array([0]))
        .lookup([pa.array([], pa.int64())], np.array([], np.int64), np.array([], np.int64))
        .tolist()
        == []
    )
    no_rows = pointintime.AsOfIndex([pa.array([], pa.int64())], np.array([], np.int64))
    lower, upper = pointintime.bounds(pa.array([BASE], US), timedelta(days=1), "us")
    assert no_rows.lookup([pa.array([1])], lower, upper).tolist() == [pointintime.NO_MATCH]
