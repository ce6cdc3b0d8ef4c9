"""Dataset drift check: per-column tests and the drifted share, with Evidently's defaults.

`check_drift(reference, current)` gives the verdicts Evidently's `Report([DataDriftPreset()])`
gives on the same data (`DriftedColumnsCount` + one `ValueDrift` per column), from Arrow tables
or pandas DataFrames, in a fraction of the time and memory:

- columns: by default every column of `current` Evidently would check; their kind is inferred
  from `current` alone, as Evidently's report takes its data definition from the current dataset
  (`monitors.columns`);
- per column: nulls, NaN and +-inf left out, then the method Evidently picks by kind, reference
  size and distinct values (`monitors.stattests.default_method`) unless `methods` names one,
  at its default threshold unless `thresholds` sets one;
- dataset: drifted when the share of drifted columns is >= `drift_share`
  (`evidently.legacy.calculations.data_drift.get_dataset_drift`).

Evidently checks free-text columns with a trained text classifier; this check does not, and
refuses them by name rather than leave them out of the drifted share unnoticed.

The steps are public for `monitors.drift_parquet`, which runs them on Parquet files a column at
a time: `select_columns`, `check_options`, a sample per column (`numeric_sample`,
`category_sample`), then `judge_column`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitors.columns import (
    CategoryTally,
    Column,
    Kind,
    category_counts,
    column_kind,
    dtype_name,
    is_integer,
    numpy_of,
    sorted_numbers,
)
from monitors.stattests import (
    FEW_VALUES,
    CategoryCounts,
    ColumnKind,
    NumericSample,
    Sample,
    default_method,
    distinct_union,
    get_method,
)

if TYPE_CHECKING:
    import pandas as pd

Frame: TypeAlias = "pa.Table | pd.DataFrame"
# A column's sample for its test, the rows each side left out of it, and why its verdict may
# not be a plain reading of the statistic.
BuiltSample: TypeAlias = tuple[Sample, int, int, "str | None"]


class DriftInputError(ValueError):
    """The data or the options cannot be checked as given; the message names what is wrong."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: ColumnKind
    method: str  # a `monitors.stattests.METHODS` name
    statistic: float  # the method's drift score: a p-value or a distance
    threshold: float
    drifted: bool
    reference_rows: int  # rows of the reference data
    current_rows: int
    reference_nulls: int  # rows left out of the test: null or NaN, or +-inf of numeric columns
    current_nulls: int
    # Why the verdict is not a plain reading of the statistic (a type change, a NaN statistic).
    warning: str | None = None


@dataclass(frozen=True)
class DriftResult:
    columns: tuple[ColumnDrift, ...]
    drift_share: float
    # Columns of `current` not checked because Evidently's preset checks no column of their
    # kind (timestamps, unsigned integers, ...), with the reason; only when `columns` is None.
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> int:
        return sum(column.drifted for column in self.columns)

    @property
    def share(self) -> float:
        return self.drifted_columns / len(self.columns)

    @property
    def dataset_drift(self) -> bool:
        return self.share >= self.drift_share


def _is_dataframe(frame: object) -> bool:
    # A DataFrame exists only once pandas is imported: Arrow callers are spared its import.
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(frame, pandas.DataFrame)


def _columns_of(frame: Frame) -> dict[str, Column]:
    if isinstance(frame, pa.Table):
        return dict(zip(frame.column_names, frame.columns))
    if _is_dataframe(frame):
        return {str(name): frame[name] for name in frame.columns}
    raise TypeError(f"expected a pyarrow.Table or a pandas.DataFrame, got {type(frame).__name__}")


def _row_count(frame: Frame) -> int:
    return frame.num_rows if isinstance(frame, pa.Table) else len(frame)


def select_columns(
    current: Sequence[str],
    reference: Collection[str],
    columns: Sequence[str] | None,
    kinds: Mapping[str, ColumnKind],
    infer_kind: Callable[[str], Kind],
    type_name: Callable[[str], str],
) -> tuple[dict[str, ColumnKind], dict[str, str]]:
    """Kinds of the columns to check, and the columns left out with the reason.

    current, reference: each side's column names; infer_kind and type_name: of a current
    column, by name (asked only of the columns `kinds` does not fix).
    """
    names = list(current) if columns is None else list(columns)
    missing = [
        f"{name!r} (not in {side} data)"
        for name in names
        for side, frame in (("current", current), ("reference", reference))
        if name not in frame
    ]
    if missing:
        raise DriftInputError(f"cannot check columns {', '.join(missing)}")
    chosen: dict[str, ColumnKind] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in kinds:
            if kinds[name] not in ("numeric", "categorical"):
                raise DriftInputError(
                    f"column {name!r}: kind {kinds[name]!r} is not 'numeric' or 'categorical'"
                )
            chosen[name] = kinds[name]
            continue
        kind = infer_kind(name)
        if kind == "text":
            raise DriftInputError(
                f"column {name!r} holds free text (more than half of its current values are "
                "distinct), which Evidently checks with a trained text classifier and this "
                "check does not; leave it out with columns=[...]"
            )
        if kind == "other":
            reason = (
                f"{type_name(name)} values: Evidently infers no numeric or "
                "categorical kind for them"
            )
            if columns is not None:
                raise DriftInputError(f"cannot check column {name!r}: {reason}")
            skipped[name] = reason
            continue
        chosen[name] = kind
    if not chosen:
        raise DriftInputError("no numeric or categorical column to check")
    return chosen, skipped


def check_options(
    kinds: Mapping[str, ColumnKind],
    methods: Mapping[str, str],
    thresholds: Mapping[str, float],
    drift_share: float,
) -> None:
    for option, given in (("methods", methods), ("thresholds", thresholds)):
        unknown = sorted(set(given) - set(kinds))
        if unknown:
            raise DriftInputError(f"{option} name columns that are not checked: {unknown}")
    for name, method in methods.items():
        try:
            get_method(method, kinds[name])
        except ValueError as exc:
            raise DriftInputError(f"column {name!r}: {exc}") from None
    for name, threshold in thresholds.items():
        if not np.isfinite(threshold):
            raise DriftInputError(f"column {name!r}: threshold {threshold!r} is not a number")
    if not 0 <= drift_share <= 1:
        raise DriftInputError(f"drift_share {drift_share!r} is not a share between 0 and 1")


def numeric_sample(name: str, reference: Column, current: Column) -> BuiltSample:
    sides = []
    for side, column in (("reference", reference), ("current", current)):
        try:
            sides.append(sorted_numbers(column))
        except TypeError as exc:
            raise DriftInputError(f"numeric column {name!r} in the {side} data {exc}") from None
    (ref, ref_left_out), (cur, cur_left_out) = sides
    integral = is_integer(reference) and is_integer(current)
    return NumericSample(ref, cur, integral), ref_left_out, cur_left_out, None


def _comparable(ref_values: pa.Array, cur_values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Both sides' values in one type when they are the same kind of value, compared as Python
    (and so Evidently) compares them: numbers and booleans by value (1 == 1.0 == True), strings
    by text. Values of different kinds are left apart: 1 and "1" are different categories."""
    if ref_values.type == cur_values.type:
        return ref_values, cur_values
    for family, common in (
        (pa.types.is_integer, pa.int64()),
        (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t),
         pa.float64()),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), pa.large_string()),
    ):
        if family(ref_values.type) and family(cur_values.type):
            try:
                return ref_values.cast(common), cur_values.cast(common)
            except pa.ArrowInvalid:  # no exact common type (uint64 beyond int64, 2**53 + 1)
                continue
    return ref_values, cur_values


def _counted_categories(name: str, reference: Column, current: Column) -> BuiltSample:
    counted = []
    for side, column in (("reference", reference), ("current", current)):
        try:
            counted.append(category_counts(column))
        except TypeError as exc:
            raise DriftInputError(f"categorical column {name!r} in the {side} data {exc}") from None
    return category_sample(*counted)


def category_sample(reference: CategoryTally, current: CategoryTally) -> BuiltSample:
    """Both sides' category counts aligned on the union of their values."""
    (ref_values, ref_counts, ref_left_out), (cur_values, cur_counts, cur_left_out) = (
        reference,
        current,
    )
    ref_values, cur_values = _comparable(ref_values, cur_values)
    if ref_values.type != cur_values.type:
        # A type change is a change: no category is shared, so the test sees the sides apart
        # (as Evidently's, where 1 != "1"), never a cast that would make them equal.
        sample = CategoryCounts(
            np.concatenate([ref_counts, np.zeros(len(cur_values), np.int64)]),
            np.concatenate([np.zeros(len(ref_values), np.int64), cur_counts]),
        )
        warning = (
            f"the reference holds {ref_values.type} values and the current data "
            f"{cur_values.type} values: no category is shared"
        )
        return sample, ref_left_out, cur_left_out, warning
    union = pc.unique(pa.concat_arrays([ref_values, cur_values]))
    union = union.take(pc.array_sort_indices(union))  # ascending: the Z-test's order
    aligned = []
    for values, counts in ((ref_values, ref_counts), (cur_values, cur_counts)):
        slots = np.zeros(len(union), np.int64)
        slots[numpy_of(pc.index_in(values, value_set=union))] = counts
        aligned.append(slots)
    return CategoryCounts(*aligned), ref_left_out, cur_left_out, None


def _check_column(
    name: str,
    kind: ColumnKind,
    reference: Column,
    current: Column,
    method_name: str | None,
    threshold: float | None,
) -> ColumnDrift:
    build = numeric_sample if kind == "numeric" else _counted_categories
    rows = (len(reference), len(current))
    return judge_column(name, kind, build(name, reference, current), rows, method_name, threshold)


def judge_column(
    name: str,
    kind: ColumnKind,
    built: BuiltSample,
    rows: tuple[int, int],
    method_name: str | None,
    threshold: float | None,
) -> ColumnDrift:
    """The verdict on one column from its sample; rows: each side's rows, counted or not."""
    sample, ref_left_out, cur_left_out, warning = built
    if isinstance(sample, NumericSample):
        ref_size, cur_size = sample.reference.size, sample.current.size
        n_unique = distinct_union(sample, FEW_VALUES)
    else:
        ref_size, cur_size = int(sample.reference.sum()), int(sample.current.sum())
        n_unique = sample.reference.size
    for side, size, side_rows in (("reference", ref_size, rows[0]), ("current", cur_size, rows[1])):
        if size == 0:
            raise DriftInputError(
                f"column {name!r} has no usable value in the {side} data: all of its {side_rows} "
                "rows are null, NaN or infinite"
            )
    if method_name is None:
        method = default_method(kind, ref_size, n_unique)
    else:
        method = get_method(method_name, kind)
    threshold = method.default_threshold if threshold is None else float(threshold)
    span = _overflowing_span(sample)
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            statistic = method.statistic(sample)
        except ValueError:  # bin edges of an infinite width
            if span is None:
                raise
            statistic = math.nan
    drifted = method.drifted(statistic, threshold)
    if math.isnan(statistic):
        # No reading is no evidence of sameness: flagged as drifted for someone to look.
        drifted = True
        warning = f"the {method.name} statistic is NaN" + (
            f": the values span {span}, wider than float64 holds" if span else ""
        )
    return ColumnDrift(
        column=name,
        kind=kind,
        method=method.name,
        statistic=statistic,
        threshold=threshold,
        drifted=drifted,
        reference_rows=rows[0],
        current_rows=rows[1],
        reference_nulls=ref_left_out,
        current_nulls=cur_left_out,
        warning=warning,
    )


def _overflowing_span(sample: Sample) -> str | None:
    """The range of a numeric sample whose width float64 cannot hold (-1e308 to 1e308), which
    every numeric method's arithmetic (differences, spreads, bin widths) overflows on."""
    if not isinstance(sample, NumericSample):
        return None
    low = min(sample.reference[0], sample.current[0])
    high = max(sample.reference[-1], sample.current[-1])
    with np.errstate(over="ignore"):
        if np.isfinite(high - low):
            return None
    return f"{low:.3g} to {high:.3g}"


def check_drift(
    reference: Frame,
    current: Frame,
    *,
    columns: Sequence[str] | None = None,
    methods: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    drift_share: float = 0.5,
    kinds: Mapping[str, ColumnKind] | None = None,
    threads: int | None = None,
) -> DriftResult:
    """Test each column of `current` (or `columns`) for drift from `reference`.

    methods: column -> a `monitors.stattests.METHODS` name, instead of Evidently's default.
    thresholds: column -> threshold, instead of the method's default.
    kinds: column -> "numeric" or "categorical", instead of inferring it from `current` (a
    monitor fixes each column's kind by its baseline, so it does not change from window to window).
    threads: columns tested at once (default: the CPUs this process may use); the tests spend
    their time in numpy and Arrow, which release the GIL.
    """
    methods, thresholds = dict(methods or {}), dict(thresholds or {})
    ref_columns, cur_columns = _columns_of(reference), _columns_of(current)
    for side, frame in (("reference", reference), ("current", current)):
        if _row_count(frame) == 0:
            raise DriftInputError(f"the {side} data has no rows")
    kinds, skipped = select_columns(
        list(cur_columns), ref_columns.keys(), columns, kinds or {},
        lambda name: column_kind(cur_columns[name]), lambda name: dtype_name(cur_columns[name]),
    )  # fmt: skip
    check_options(kinds, methods, thresholds, drift_share)
    workers = threads or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(kinds)))) as pool:
        checked = pool.map(
            lambda name: _check_column(
                name,
                kinds[name],
                ref_columns[name],
                cur_columns[name],
                methods.get(name),
                thresholds.get(name),
            ),
            kinds,
        )
        return DriftResult(columns=tuple(checked), drift_share=drift_share, skipped=skipped)
