"""Summary statistics of an export's features, accumulated chunk by chunk as they are written.

They go into the export's metadata, where monitors take a training baseline from without reading
the rows again; merging per-chunk moments exactly gives the figures of one pass over all rows.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TOP_CATEGORIES = 50


class Statistics:
    """Per column, accumulated chunk by chunk: count (of values), null_count (nulls and NaN),
    then for numbers mean, std (sample, ddof=1), min and max, for strings the TOP_CATEGORIES
    most frequent values with their counts."""

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._counts = dict.fromkeys(schema.names, 0)
        self._nulls = dict.fromkeys(schema.names, 0)
        # Numbers: (mean, sum of squared deviations, min, max) of the values so far.
        self._moments: dict[str, tuple[float, float, Any, Any]] = {}
        self._categories: dict[str, list[pa.StructArray]] = {n: [] for n in schema.names}

    def add(self, table: pa.Table) -> None:
        for field in self._schema:
            column = table.column(field.name)
            values = _present(column, field.type)
            seen = self._counts[field.name]
            self._counts[field.name] += len(values)
            self._nulls[field.name] += len(column) - len(values)
            if not len(values):
                continue
            if _is_number(field.type):
                self._merge_moments(field.name, seen, values)
            elif is_string(field.type):
                self._categories[field.name].append(pc.value_counts(values))

    def _merge_moments(self, name: str, seen: int, values: pa.ChunkedArray) -> None:
        as_float = values.cast(pa.float64())
        count = len(values)
        mean = pc.mean(as_float).as_py()
        squares = pc.variance(as_float, ddof=0).as_py() * count
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if name in self._moments:
            # Chan et al.'s pairwise update: exact moments of the union, no second pass.
            old_mean, old_squares, old_low, old_high = self._moments[name]
            total = seen + count
            delta = mean - old_mean
            mean = old_mean + delta * count / total
            squares = old_squares + squares + delta * delta * seen * count / total
            low, high = min(low, old_low), max(high, old_high)
        self._moments[name] = (mean, squares, low, high)

    def result(self) -> dict[str, dict[str, Any]]:
        described = {}
        for field in self._schema:
            name = field.name
            count = self._counts[name]
            stats: dict[str, Any] = {"count": count, "null_count": self._nulls[name]}
            if _is_number(field.type):
                stats |= self._number_figures(name, count)
            elif is_string(field.type):
                stats["categories"] = self._top_categories(name)
            described[name] = stats
        return described

    def _number_figures(self, name: str, count: int) -> dict[str, Any]:
        if name not in self._moments:  # no values: no figures
            return dict.fromkeys(("mean", "std", "min", "max"))
        mean, squares, low, high = self._moments[name]
        return {
            "mean": _finite(mean),
            "std": _finite(math.sqrt(squares / (count - 1))) if count > 1 else None,
            "min": _finite(low),
            "max": _finite(high),
        }

    def _top_categories(self, name: str) -> dict[str, int]:
        if not self._categories[name]:
            return {}
        counts = pa.Table.from_struct_array(pa.chunked_array(self._categories[name]))
        totals = counts.group_by("values").aggregate([("counts", "sum")])
        top = totals.sort_by([("counts_sum", "descending"), ("values", "ascending")])
        top = top.slice(0, TOP_CATEGORIES).to_pydict()
        return dict(zip(top["values"], top["counts_sum"]))


def _present(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """The column's values that count: neither null nor NaN."""
    values = pc.drop_null(column)
    if pa.types.is_floating(kind):
        nan = pc.is_nan(values)
        if pc.any(nan).as_py():
            values = values.filter(pc.invert(nan))
    return values


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _finite(value: float | None) -> float | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
