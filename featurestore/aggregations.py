"""Semantics of windowed aggregations: the one module batch (Spark) and stream engines share.

A feature row is emitted for every event. For an event of key `k` at event time `t`, an
aggregation over window `w` covers every event of `k` whose event time `ts` satisfies
`t - w < ts <= t` (microsecond resolution). So events at identical timestamps all see each
other, and an event exactly `w` older than `t` has left the window.

`sum` and `mean` are computed in fixed point at `SUM_RESOLUTION` (1e-6): values are scaled to
integer units with `floor(x * 1e6 + 0.5)`, summed as 64-bit integers and scaled back. That makes
them exact, independent of summation order, and updatable by add/subtract in a stream, so batch
and stream agree to the bit. `mean` is `(units_sum / 1e6) / count`, two IEEE operations every
engine performs identically. `count` counts non-null values; `count_distinct` counts distinct
non-null values; `max`/`min` are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from feast import Field
    from feast.aggregation import Aggregation

SUM_SCALE = 1_000_000
SUM_RESOLUTION = 1 / SUM_SCALE

INTEGER_FUNCTIONS = frozenset({"count", "count_distinct"})
FLOAT_FUNCTIONS = frozenset({"sum", "mean", "max", "min"})
FUNCTIONS = INTEGER_FUNCTIONS | FLOAT_FUNCTIONS


class AggregationError(ValueError):
    """A declared aggregation this module cannot compute."""


@dataclass(frozen=True)
class WindowedAggregation:
    """One declared aggregation, resolved: output feature `name` = `function`(`column`) over `window`."""

    name: str
    column: str
    function: str
    window: timedelta

    @property
    def window_us(self) -> int:
        return self.window // timedelta(microseconds=1)

    @property
    def is_integer(self) -> bool:
        return self.function in INTEGER_FUNCTIONS

    @property
    def lower_offset_us(self) -> int:
        """Offset of the oldest event time still inside the window, relative to the row's time."""
        return -(self.window_us - 1)


def resolve(aggregation: Aggregation, view_name: str) -> WindowedAggregation:
    """Validate a Feast `Aggregation` from the registry and give it its output name."""
    where = f"feature view {view_name!r}, aggregation on column {aggregation.column!r}"
    if aggregation.function not in FUNCTIONS:
        raise AggregationError(
            f"{where}: unsupported function {aggregation.function!r}; "
            f"supported: {', '.join(sorted(FUNCTIONS))}"
        )
    if aggregation.time_window is None or aggregation.time_window <= timedelta(0):
        raise AggregationError(f"{where}: a positive time_window is required")
    if aggregation.time_window % timedelta(microseconds=1):
        raise AggregationError(f"{where}: time_window must be a whole number of microseconds")
    if aggregation.slide_interval not in (None, aggregation.time_window):
        raise AggregationError(
            f"{where}: only per-event (sliding) windows are supported; remove slide_interval"
        )
    return WindowedAggregation(
        name=aggregation.resolved_name(aggregation.time_window),
        column=aggregation.column,
        function=aggregation.function,
        window=aggregation.time_window,
    )


def resolve_all(aggregations: Iterable[Aggregation], view_name: str) -> list[WindowedAggregation]:
    resolved = [resolve(a, view_name) for a in aggregations]
    names = [r.name for r in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AggregationError(f"feature view {view_name!r}: duplicate output names {duplicates}")
    return resolved


def aggregated_schema(aggregations: Iterable[Aggregation]) -> list[Field]:
    """The Feast schema fields a stream feature view declares for its aggregations.

    Used by `feature_repo/` so each output name and type is derived from its one declaration.
    """
    from feast import Field
    from feast.types import Float64, Int64

    return [
        Field(
            name=a.resolved_name(a.time_window),
            dtype=Int64 if a.function in INTEGER_FUNCTIONS else Float64,
        )
        for a in aggregations
    ]


def to_units(values: np.ndarray) -> np.ndarray:
    """Values in fixed-point integer units, the representation sums are computed in."""
    return np.floor(np.asarray(values, dtype=np.float64) * SUM_SCALE + 0.5).astype(np.int64)


def units_to_value(units_sum: int | np.ndarray) -> float | np.ndarray:
    return np.asarray(units_sum, dtype=np.float64) / SUM_SCALE


def mean_from_units(units_sum: int | np.ndarray, count: int | np.ndarray) -> float | np.ndarray:
    return units_to_value(units_sum) / np.asarray(count, dtype=np.float64)
