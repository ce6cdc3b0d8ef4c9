"""Incremental windows: the stream engine's form of the semantics in `featurestore.aggregations`.

`WindowState` keeps, per entity key, the events still inside the longest window plus the allowed
lateness. `apply` takes a micro-batch of accepted events and returns every feature row the batch
changes: a row for each new event, and a corrected row for each buffered event of the same key
at or after the key's earliest new event (an event at the same instant, or a late one, belongs
to those rows' windows too). Keeping the newest row per (key, event time) therefore gives exactly
the rows the Spark backfill computes from the same events, whatever the arrival order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from featurestore.aggregations import (
    WindowedAggregation,
    mean_from_units,
    to_units,
    units_to_value,
)


@dataclass
class _Buffer:
    """One key's retained events, sorted by event time (arrival order among equal times)."""

    ts: np.ndarray
    values: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]


@dataclass(frozen=True)
class FeatureRows:
    """Rows changed by one micro-batch: `keys[i]` at event time `ts[i]` has `features[name][i]`.

    Float features use NaN for "no value" (an empty window); counts are never missing.
    """

    keys: np.ndarray
    ts: np.ndarray
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)


def _valid(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is not None for v in values], dtype=bool)
    return np.ones(len(values), dtype=bool)


class WindowState:
    def __init__(self, aggregations: Sequence[WindowedAggregation], lateness: timedelta) -> None:
        if not aggregations:
            raise ValueError("a window state needs at least one aggregation")
        self.aggregations = tuple(aggregations)
        self.columns = sorted({a.column for a in self.aggregations})
        longest = max(a.window for a in self.aggregations)
        self.retention_us = (longest + lateness) // timedelta(microseconds=1)
        self._buffers: dict[Hashable, _Buffer] = {}

    @property
    def keys(self) -> int:
        return len(self._buffers)

    def events(self, key: Hashable) -> int:
        buffer = self._buffers.get(key)
        return 0 if buffer is None else len(buffer.ts)

    def apply(
        self, keys: np.ndarray, ts_us: np.ndarray, columns: Mapping[str, np.ndarray]
    ) -> FeatureRows:
        """Add accepted events (in arrival order) and return the feature rows they change."""
        keys, ts_us = np.asarray(keys), np.asarray(ts_us, dtype=np.int64)
        if keys.dtype.kind == "O":
            # Object keys: factorize by first appearance instead of sorting unorderable tuples.
            labels: dict[Hashable, int] = {}
            codes = np.fromiter((labels.setdefault(k, len(labels)) for k in keys), np.int64)
            groups = [np.flatnonzero(codes == c) for c in range(len(labels))]
        else:
            order = np.argsort(keys, kind="stable")
            bounds = np.flatnonzero(np.diff(keys[order])) + 1
            groups = np.split(order, bounds) if len(order) else []
        out_keys, out_ts = [], []
        out_features: dict[str, list[np.ndarray]] = {a.name: [] for a in self.aggregations}
        for rows in groups:
            key = keys[rows[0]].item() if keys.dtype.kind != "O" else keys[rows[0]]
            new = {c: np.asarray(columns[c])[rows] for c in self.columns}
            buffer = self._merge(key, ts_us[rows], new)
            changed = np.flatnonzero(buffer.ts >= ts_us[rows].min())
            features = self._rows(buffer, changed)
            out_keys.append(np.full(len(changed), key, dtype=keys.dtype))
            out_ts.append(buffer.ts[changed])
            for name, values in features.items():
                out_features[name].append(values)
            self._evict(key, buffer)
        if not out_ts:
            empty = np.zeros(0, dtype=np.int64)
            return FeatureRows(keys[:0], empty, {a.name: empty for a in self.aggregations})
        return FeatureRows(
            np.concatenate(out_keys),
            np.concatenate(out_ts),
            {name: np.concatenate(parts) for name, parts in out_features.items()},
        )

    def _merge(self, key: Hashable, ts: np.ndarray, values: dict[str, np.ndarray]) -> _Buffer:
        old = self._buffers.get(key)
        if old is not None:
            ts = np.concatenate([old.ts, ts])
            values = {c: np.concatenate([old.values[c], values[c]]) for c in self.columns}
        order = np.argsort(ts, kind="stable")
        values = {c: v[order] for c, v in values.items()}
        buffer = _Buffer(ts[order], values, {c: _valid(v) for c, v in values.items()})
        self._buffers[key] = buffer
        return buffer

    def _evict(self, key: Hashable, buffer: _Buffer) -> None:
        keep = buffer.ts > buffer.ts[-1] - self.retention_us
        if not keep.all():
            self._buffers[key] = _Buffer(
                buffer.ts[keep],
                {c: v[keep] for c, v in buffer.values.items()},
                {c: v[keep] for c, v in buffer.valid.items()},
            )

    def _rows(self, buffer: _Buffer, changed: np.ndarray) -> dict[str, np.ndarray]:
        ts = buffer.ts
        hi = np.searchsorted(ts, ts[changed], side="right")
        features = {}
        for agg in self.aggregations:
            lo = np.searchsorted(ts, ts[changed] - agg.window_us, side="right")
            valid = buffer.valid[agg.column]
            counts = np.concatenate(([0], np.cumsum(valid)))
            count = counts[hi] - counts[lo]
            if agg.function == "count":
                features[agg.name] = count
            elif agg.function in ("sum", "mean"):
                values = buffer.values[agg.column]
                units = np.where(valid, to_units(np.where(valid, values, 0)), 0)
                sums = np.concatenate(([0], np.cumsum(units)))[hi] - np.concatenate(
                    ([0], np.cumsum(units))
                )[lo]
                value = units_to_value(sums) if agg.function == "sum" else mean_from_units(
                    sums, np.maximum(count, 1)
                )
                features[agg.name] = np.where(count > 0, value, np.nan)
            else:
                features[agg.name] = self._slice_agg(agg, buffer, lo, hi)
        return features

    @staticmethod
    def _slice_agg(
        agg: WindowedAggregation, buffer: _Buffer, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        values, valid = buffer.values[agg.column], buffer.valid[agg.column]
        if agg.function == "count_distinct":
            return np.array(
                [len(set(values[a:b][valid[a:b]].tolist())) for a, b in zip(lo, hi)],
                dtype=np.int64,
            )
        reduce = np.max if agg.function == "max" else np.min
        out = np.full(len(lo), np.nan)
        for i, (a, b) in enumerate(zip(lo, hi)):
            window = values[a:b][valid[a:b]]
            if len(window):
                out[i] = float(reduce(window))
        return out
