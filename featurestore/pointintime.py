"""Point-in-time join semantics: for each entity row, the feature row valid at its event time.

A feature row of event time `ts` is valid for an entity row of the same key at time `t` when
`t - ttl <= ts <= t`, both ends inclusive as Feast's offline stores filter (a zero ttl means no
lower bound). The latest valid `ts` wins; rows at the same `ts` are ordered by their created
timestamp (a null created time first, as Feast sorts them), and rows equal in both by their
position (the later one wins). An entity row without a valid row gets no match: nulls, never a
future row.

Vectorized: the feature rows are sorted once on int64 composite keys (key code, time), then each
batch of entity rows is answered by one binary search per row, with no Python loop over rows.
Memory is a few int64 arrays per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NO_MATCH = -1
INT64_MIN = np.iinfo(np.int64).min
# Composite keys (key code * span + time) must stay below this to fit an int64.
_COMPOSITE_LIMIT = 2**62
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}

Column: TypeAlias = pa.Array | pa.ChunkedArray
KeyCoder: TypeAlias = Callable[[Sequence[Column]], np.ndarray]


def bounds(times: Column, ttl: timedelta, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive [lower, upper] event times of the rows valid at each of `times`, in `unit`.

    `unit` is the unit of the feature rows' timestamps. The bounds are exact whatever the unit
    of `times`: the upper one is rounded down and the lower one up, so an entity time between
    two ticks of `unit` admits exactly the rows the definition admits. A zero ttl gives no lower
    bound (INT64_MIN). Naive timestamps are UTC, as in Feast.
    """
    if times.null_count:
        raise ValueError("entity times must not be null")
    # The finest of the two units and the ttl's microseconds holds every value exactly.
    finest = min(_NS_PER_UNIT[times.type.unit], _NS_PER_UNIT[unit], _NS_PER_UNIT["us"])
    finest_unit = next(u for u, ns in _NS_PER_UNIT.items() if ns == finest)
    ticks = pc.cast(times, pa.timestamp(finest_unit, times.type.tz)).cast(pa.int64())
    t = ticks.to_numpy(zero_copy_only=False)
    per_tick = _NS_PER_UNIT[unit] // finest
    upper = np.floor_divide(t, per_tick)
    ttl_ticks = ttl // timedelta(microseconds=1) * (_NS_PER_UNIT["us"] // finest)
    if ttl_ticks == 0:
        return np.full(t.shape, INT64_MIN, dtype=np.int64), upper
    return -np.floor_divide(ttl_ticks - t, per_tick), upper


def timestamp_ints(times: Column) -> tuple[np.ndarray, np.ndarray]:
    """int64 ticks of a timestamp column in its own unit, and the mask of its non-null values."""
    return _int64s(times)


class AsOfIndex:
    """One view's feature rows, sorted to answer point-in-time lookups of entity rows.

    `row_keys` are the join key columns, `row_ts` and `row_created` int64 times in one unit (a
    null created time given as INT64_MIN). Rows with a null key part or outside `row_valid` (a
    null event time) never match.
    """

    def __init__(
        self,
        row_keys: Sequence[Column],
        row_ts: np.ndarray,
        row_created: np.ndarray | None = None,
        row_valid: np.ndarray | None = None,
    ) -> None:
        row_code, codes, self._encode = _code_rows(row_keys)
        usable = row_code >= 0
        if row_valid is not None:
            usable &= row_valid
        candidates = np.flatnonzero(usable)
        code, ts = row_code[candidates], row_ts[candidates]
        self._axis = _TimeAxis.of(ts, codes)
        composite = code * self._axis.span + self._axis.rows(ts)
        # Stable: offline tables are sorted by key within each file, and timsort merges runs.
        order = np.argsort(composite, kind="stable")
        composite = composite[order]
        if row_created is not None:
            _order_ties(order, composite, row_created[candidates])
        last = np.ones(len(composite), dtype=bool)
        last[:-1] = composite[1:] != composite[:-1]
        order = order[last]
        self._composite = composite[last]
        self._code, self._ts, self._row = code[order], ts[order], candidates[order]

    def lookup(
        self, entity_keys: Sequence[Column], lower: np.ndarray, upper: np.ndarray
    ) -> np.ndarray:
        """For each entity row, the index of its feature row, or NO_MATCH.

        `entity_keys` are the entity rows' join key columns, in the order of the rows' ones;
        `lower` and `upper` their inclusive time bounds (see `bounds`).
        """
        if not len(self._composite) or not len(upper):
            return np.full(len(upper), NO_MATCH, dtype=np.int64)
        entity_code = self._encode(entity_keys)
        known = entity_code >= 0
        composite = np.where(known, entity_code, 0) * self._axis.span + self._axis.entities(upper)
        # Searching in ascending order walks the table once instead of jumping all over it.
        needles = np.argsort(composite)
        position = np.empty(len(needles), dtype=np.int64)
        position[needles] = np.searchsorted(self._composite, composite[needles], side="right") - 1
        known &= position >= 0
        found = np.where(known, position, 0)
        match = known & (self._code[found] == entity_code) & (self._ts[found] >= lower)
        return np.where(match, self._row[found], NO_MATCH)


def _order_ties(order: np.ndarray, ordered: np.ndarray, created: np.ndarray) -> None:
    """Reorder, in place, rows of equal composite key by (created, position) ascending."""
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return
    tied = np.zeros(len(ordered), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    slots = np.flatnonzero(tied)
    rows = order[slots]
    # Groups occupy contiguous slots, so sorting the tied rows by (key, created, position) and
    # writing them back into the same slots orders each group without moving the others.
    order[slots] = rows[np.lexsort((rows, created[rows], ordered[slots]))]


@dataclass(frozen=True)
class _TimeAxis:
    """Times mapped so that `code * span + position` fits an int64 and keeps their order.

    The positions are the times themselves (less a base) when they fit, else their dense ranks.
    An entity's position is at or after exactly the rows with `ts <= upper`.
    """

    span: int
    base: int = 0
    final: int = 0
    distinct: np.ndarray | None = None

    @classmethod
    def of(cls, ts: np.ndarray, codes: int) -> _TimeAxis:
        if not len(ts):
            return cls(span=1)
        first, final = int(ts.min()), int(ts.max())
        span = final - first + 2
        if codes * span < _COMPOSITE_LIMIT:
            return cls(span=span, base=first - 1, final=final)
        distinct = np.unique(ts)
        return cls(span=len(distinct) + 1, distinct=distinct)

    def rows(self, ts: np.ndarray) -> np.ndarray:
        if self.distinct is None:
            return ts - self.base
        return np.searchsorted(self.distinct, ts) + 1

    def entities(self, upper: np.ndarray) -> np.ndarray:
        if self.distinct is None:
            return np.clip(upper, self.base, self.final) - self.base
        return np.searchsorted(self.distinct, upper, side="right")


def _code_rows(row_keys: Sequence[Column]) -> tuple[np.ndarray, int, KeyCoder]:
    """int64 codes of the rows' keys (-1: a null part), how many, and how to code entity keys."""
    if not row_keys:
        raise ValueError("feature rows need at least one join key column")
    if len(row_keys) == 1 and pa.types.is_integer(row_keys[0].type):
        offsets = _integer_offsets(row_keys[0])
        if offsets is not None:
            return offsets
    return _dictionary_codes(row_keys)


def _integer_offsets(column: Column) -> tuple[np.ndarray, int, KeyCoder] | None:
    """Integer keys as offsets from the smallest: codes without hashing, if the range is dense."""
    rows, valid = _int64s(column)
    if not valid.any():
        return None
    present = rows[valid] if column.null_count else rows
    low, high = int(present.min()), int(present.max())
    codes = high - low + 1
    if codes > 4 * len(rows) + 1_024:
        return None

    def encode(entity_keys: Sequence[Column]) -> np.ndarray:
        (entity_column,) = _one_per_row_key(entity_keys, 1)
        if not pa.types.is_integer(entity_column.type):
            raise TypeError(f"entity key is {entity_column.type}, feature rows' is {column.type}")
        values, known = _int64s(entity_column)
        known &= (values >= low) & (values <= high)
        return np.where(known, values - low, -1)

    return np.where(valid, rows - low, -1), codes, encode


def _dictionary_codes(row_keys: Sequence[Column]) -> tuple[np.ndarray, int, KeyCoder]:
    """Codes from each column's dictionary, combined column by column and densified again."""
    dictionaries: list[pa.Array] = []
    combinations: list[np.ndarray] = []  # the combined codes present, after each extra column
    codes = np.zeros(0, dtype=np.int64)
    count = 1
    for i, column in enumerate(row_keys):
        encoded = pc.dictionary_encode(_array(column))
        part = _codes_or_minus_one(encoded.indices)
        dictionaries.append(encoded.dictionary)
        if i == 0:
            codes, count = part, len(encoded.dictionary)
            continue
        combined = _combine(codes, part, len(encoded.dictionary))
        present = np.unique(combined[combined >= 0])
        combinations.append(present)
        codes = np.where(combined >= 0, np.searchsorted(present, combined), -1)
        count = max(len(present), 1)

    def encode(entity_keys: Sequence[Column]) -> np.ndarray:
        entity_keys = _one_per_row_key(entity_keys, len(dictionaries))
        codes = np.zeros(0, dtype=np.int64)
        for i, (column, dictionary) in enumerate(zip(entity_keys, dictionaries)):
            part = _codes_or_minus_one(pc.index_in(column, value_set=dictionary))
            if i == 0:
                codes = part
                continue
            combined = _combine(codes, part, len(dictionary))
            present = combinations[i - 1]
            slot = np.minimum(np.searchsorted(present, combined), max(len(present) - 1, 0))
            hit = (combined >= 0) & (len(present) > 0)
            hit[hit] = present[slot[hit]] == combined[hit]
            codes = np.where(hit, slot, -1)
        return codes

    return codes, count, encode


def _combine(codes: np.ndarray, part: np.ndarray, size: int) -> np.ndarray:
    return np.where((codes >= 0) & (part >= 0), codes * size + part, -1)


def _one_per_row_key(entity_keys: Sequence[Column], count: int) -> Sequence[Column]:
    if len(entity_keys) != count:
        raise ValueError(f"{len(entity_keys)} entity key column(s) for {count} of the rows")
    return entity_keys


def _int64s(column: Column) -> tuple[np.ndarray, np.ndarray]:
    ints = pc.cast(column, pa.int64())
    if not ints.null_count:
        return ints.to_numpy(zero_copy_only=False), np.ones(len(ints), dtype=bool)
    valid = pc.is_valid(ints).to_numpy(zero_copy_only=False)
    return pc.fill_null(ints, 0).to_numpy(zero_copy_only=False), valid


def _array(column: Column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _codes_or_minus_one(indices: Column) -> np.ndarray:
    return pc.fill_null(pc.cast(indices, pa.int64()), -1).to_numpy(zero_copy_only=False)
