"""Incremental windows: the stream engine's form of the semantics in `featurestore.aggregations`.

`WindowState` keeps, per entity key, the events still inside the longest window plus the allowed
lateness. `apply` takes a micro-batch of accepted events and returns every feature row the batch
changes: a row for each new event, and a corrected row for each retained event of the same key
at or after the key's earliest new event (an event at the same instant, or a late one, belongs
to those rows' windows too). Keeping the newest row per (key, event time) therefore gives exactly
the rows the Spark backfill computes from the same events, whatever the arrival order.

All keys' events live in one set of arrays sorted by (key, event time, arrival), so a batch is
a handful of whole-array numpy operations rather than a loop over keys. Window bounds are found
by a binary search within each key's run, comparing event times only: no arithmetic mixes keys
or event times into one number, so nothing can overflow 64 bits (durations longer than
`LONGEST_US` are clamped to it: a window that long covers any two timestamps the validator
accepts, years 1 to 9999). Events must arrive within
the allowed lateness of the newest event time seen (the watermark); the caller sends later ones
to the dead-letter topic, and `apply` refuses them, because their windows may already be evicted.
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

NO_WATERMARK = int(np.iinfo(np.int64).min)
# ~146,000 years: longer than the distance between any two event times of years 1 to 9999, and
# small enough that an event time minus it stays inside int64.
LONGEST_US = 2**62
_NONE = int(np.iinfo(np.int64).max)  # no event held


def duration_us(duration: timedelta) -> int:
    """A window, lateness or retention in microseconds, clamped to `LONGEST_US`."""
    return min(duration // timedelta(microseconds=1), LONGEST_US)


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
        self.lateness_us = duration_us(lateness)
        self.retention_us = min(duration_us(longest) + self.lateness_us, LONGEST_US)
        self.watermark = NO_WATERMARK  # newest event time applied so far
        # Keys are stored as int64 codes: int keys as themselves, others through this table.
        self._codes: dict[Hashable, int] = {}
        self._key_of: list[Hashable] = []
        self._code = np.zeros(0, dtype=np.int64)
        self._ts = np.zeros(0, dtype=np.int64)
        self._seq = np.zeros(0, dtype=np.int64)
        self._values: dict[str, np.ndarray] = {}
        self._arrivals = 0
        self._oldest = _NONE  # the oldest event time held, for `_evict`

    def events(self, key: Hashable) -> int:
        """Events of `key` still retained (inside the longest window plus the lateness)."""
        code = self._encode(np.array([key], dtype=object if not isinstance(key, int) else None))
        retained = self._code == code[0]
        if self.watermark != NO_WATERMARK:
            retained &= self._ts > self.watermark - self.retention_us
        return int(np.count_nonzero(retained))

    def too_late_before(self) -> int:
        """Events with an earlier event time (µs) are too late to apply."""
        if self.watermark == NO_WATERMARK:
            return self.watermark
        return self.watermark - self.lateness_us

    def _encode(self, keys: np.ndarray) -> np.ndarray:
        if keys.dtype.kind in "iu":
            return keys.astype(np.int64)
        return np.fromiter(
            (self._codes.setdefault(k, len(self._codes)) for k in keys), np.int64, len(keys)
        )

    def _decode(self, codes: np.ndarray, like: np.ndarray) -> np.ndarray:
        if like.dtype.kind in "iu":
            return codes.astype(like.dtype)
        if len(self._key_of) < len(self._codes):
            self._key_of = list(self._codes)
        out = np.empty(len(codes), dtype=object)
        out[:] = [self._key_of[c] for c in codes]
        return out

    def load(
        self,
        keys: np.ndarray,
        ts_us: np.ndarray,
        columns: Mapping[str, np.ndarray],
        watermark: int | None = None,
    ) -> None:
        """Restore events applied before (in their arrival order) without computing rows.

        Loading a log of applied events in order gives the state an uninterrupted run has.
        """
        self.apply(keys, ts_us, columns, watermark=watermark, rows=False)

    def apply(
        self,
        keys: np.ndarray,
        ts_us: np.ndarray,
        columns: Mapping[str, np.ndarray],
        *,
        watermark: int | None = None,
        rows: bool = True,
    ) -> FeatureRows:
        """Add accepted events (in arrival order) and return the feature rows they change.

        The watermark then advances to `watermark` if given, else to the newest event time. A
        caller merging several ordered inputs passes the oldest of their watermarks (or
        `NO_WATERMARK` while an input has not been seen), so no input's on-time event is refused.
        """
        keys = np.asarray(keys)
        new_ts = np.asarray(ts_us, dtype=np.int64)
        n = len(new_ts)
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return FeatureRows(keys[:0], empty, {a.name: empty for a in self.aggregations})
        too_late = np.count_nonzero(new_ts < self.too_late_before())
        if too_late:
            raise ValueError(
                f"{too_late} event(s) older than the watermark minus the allowed lateness; "
                "route them to the dead-letter topic before applying the batch"
            )
        new_code = self._encode(keys)
        new_seq = np.arange(self._arrivals, self._arrivals + n, dtype=np.int64)
        self._arrivals += n

        # Only the batch's keys change: their retained runs (found by binary search in the
        # state, which is sorted by key) and the new events are sorted and computed on their
        # own, so a batch costs its keys' events, not the whole state's.
        batch_codes, inverse = np.unique(new_code, return_inverse=True)
        taken = _runs(self._code, batch_codes)
        code = np.concatenate([self._code[taken], new_code])
        ts = np.concatenate([self._ts[taken], new_ts])
        seq = np.concatenate([self._seq[taken], new_seq])
        values = {
            c: np.concatenate([self._values[c][taken], np.asarray(columns[c])])
            if c in self._values
            else np.asarray(columns[c])
            for c in self.columns
        }
        order = np.lexsort((seq, ts, code))
        code, ts, seq = code[order], ts[order], seq[order]
        values = {c: v[order] for c, v in values.items()}

        # Segments: one run of rows per key.
        starts = np.flatnonzero(np.concatenate(([True], code[1:] != code[:-1])))
        segment = np.cumsum(np.concatenate(([False], code[1:] != code[:-1])))

        # Rows the batch changes: its keys' rows at or after the key's earliest new event.
        earliest = np.full(len(batch_codes), np.iinfo(np.int64).max)
        np.minimum.at(earliest, inverse, new_ts)
        changed = np.flatnonzero(ts >= earliest[np.searchsorted(batch_codes, code)])

        if not rows:
            changed = changed[:0]
        features = self._features(ts, values, segment, starts, changed)
        result = FeatureRows(self._decode(code[changed], keys), ts[changed], features)

        # The batch's keys' runs go back in key order, in place of their old ones.
        kept = np.ones(len(self._code), dtype=bool)
        kept[taken] = False
        at = np.searchsorted(self._code[kept], code)
        self._code = np.insert(self._code[kept], at, code)
        self._ts = np.insert(self._ts[kept], at, ts)
        self._seq = np.insert(self._seq[kept], at, seq)
        self._values = {
            c: np.insert(self._values[c][kept], at, v) if c in self._values else v
            for c, v in values.items()
        }
        self._oldest = min(self._oldest, int(new_ts.min()))
        self.watermark = max(self.watermark, int(new_ts.max()) if watermark is None else watermark)
        self._evict()
        return result

    def _evict(self) -> None:
        """Drop the events no window can reach any more.

        No accepted event can be older than watermark - lateness, so no future window reaches
        back past watermark - lateness - longest window. Dropping them costs a pass over the
        whole state, so it waits until they are an eighth of the retention old: events past
        the retention stay outside every window (a window is bounded by event times), so
        keeping them a while changes no row, only memory (at most an eighth more).
        """
        if self.watermark == NO_WATERMARK:
            return
        reach = self.watermark - self.retention_us
        if self._oldest == _NONE or reach - self._oldest < max(self.retention_us // 8, 1):
            return
        keep = self._ts > reach
        self._code, self._ts, self._seq = self._code[keep], self._ts[keep], self._seq[keep]
        self._values = {c: v[keep] for c, v in self._values.items()}
        self._oldest = int(self._ts.min()) if len(self._ts) else _NONE

    def _features(
        self,
        ts: np.ndarray,
        values: dict[str, np.ndarray],
        segment: np.ndarray,
        starts: np.ndarray,
        changed: np.ndarray,
    ) -> dict[str, np.ndarray]:
        # Each changed row's window is a range of its key's run: [first event time > t - w,
        # last event time <= t].
        ends = np.append(starts[1:], len(ts))
        run_start, run_end = starts[segment[changed]], ends[segment[changed]]
        at = ts[changed]
        hi = _after(ts, run_start, run_end, at)
        valid = {c: _valid(v) for c, v in values.items()}
        features = {}
        starts_of: dict[int, np.ndarray] = {}  # per window length: aggregations share them
        for agg in self.aggregations:
            span = duration_us(agg.window)
            if span not in starts_of:
                starts_of[span] = _after(ts, run_start, run_end, _minus(at, span))
            lo = starts_of[span]
            ok = valid[agg.column]
            counts = np.concatenate(([0], np.cumsum(ok)))
            count = counts[hi] - counts[lo]
            if agg.function == "count":
                features[agg.name] = count
            elif agg.function in ("sum", "mean"):
                units = np.where(ok, to_units(np.where(ok, values[agg.column], 0)), 0)
                prefix = np.concatenate(([0], np.cumsum(units)))
                total = prefix[hi] - prefix[lo]
                value = (
                    units_to_value(total)
                    if agg.function == "sum"
                    else mean_from_units(total, np.maximum(count, 1))
                )
                features[agg.name] = np.where(count > 0, value, np.nan)
            elif agg.function in ("max", "min"):
                numbers = np.where(ok, values[agg.column], np.nan).astype(np.float64)
                reduce = np.fmax if agg.function == "max" else np.fmin
                # reduceat over interleaved [lo, hi) bounds; every window holds its own row.
                bounds = np.column_stack([lo, hi]).ravel()
                padded = np.concatenate([numbers, [np.nan]])
                features[agg.name] = reduce.reduceat(padded, bounds)[::2] if len(bounds) else (
                    np.zeros(0)
                )
            else:
                column, present = values[agg.column], ok
                features[agg.name] = np.fromiter(
                    (len(set(column[a:b][present[a:b]].tolist())) for a, b in zip(lo, hi)),
                    np.int64,
                    len(lo),
                )
        return features


def _runs(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The positions in `sorted_codes` holding any of `codes` (ascending, unique)."""
    first = np.searchsorted(sorted_codes, codes, "left")
    lengths = np.searchsorted(sorted_codes, codes, "right") - first
    first, lengths = first[lengths > 0], lengths[lengths > 0]
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    # Each run is first..first + length - 1: ones, with a jump where the next run begins.
    step = np.ones(int(lengths.sum()), dtype=np.int64)
    step[0] = first[0]
    step[np.cumsum(lengths)[:-1]] = first[1:] - (first[:-1] + lengths[:-1] - 1)
    return np.cumsum(step)


def _minus(at: np.ndarray, span_us: int) -> np.ndarray:
    """`at - span_us`, saturating at the smallest int64 instead of wrapping."""
    floor = NO_WATERMARK + span_us
    return np.where(at < floor, NO_WATERMARK, at - span_us)


def _after(ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per query i: the first index in [lo[i], hi[i]) whose `ts` is above `bound[i]` (else hi[i]).

    `ts[lo[i]:hi[i]]` is ascending: a vectorized binary search over all queries at once.
    """
    lo, hi = lo.copy(), hi.copy()
    open_ = np.flatnonzero(lo < hi)
    while len(open_):
        mid = (lo[open_] + hi[open_]) // 2
        above = ts[mid] > bound[open_]
        hi[open_[above]] = mid[above]
        lo[open_[~above]] = mid[~above] + 1
        open_ = open_[lo[open_] < hi[open_]]
    return lo
