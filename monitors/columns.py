"""What a drift check reads from a column: its kind, as Evidently infers it, and its usable values.

Columns come from Arrow tables (our exports and feature logs are Parquet) or pandas DataFrames.
Arrow columns are read as Arrow or numpy buffers, never as pandas object columns; their kind is
the kind Evidently would infer for the same column after `Table.to_pandas()`.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Column: TypeAlias = pa.ChunkedArray | pd.Series

Kind = Literal["numeric", "categorical", "text", "other"]

# evidently/core/datasets.py: integer columns with at most this many distinct values are
# categorical (INTEGER_CARDINALITY_LIMIT).
INTEGER_CARDINALITY_LIMIT = 10
# Arrow types pandas reads as numbers (`is_numeric_dtype`), which Evidently's tests then accept.
NUMBER_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


def _integer_kind(distinct: int) -> Kind:
    return "categorical" if distinct <= INTEGER_CARDINALITY_LIMIT else "numeric"


def _string_kind(distinct: int, non_null: int) -> Kind:
    # Strings are free text once more than half of the non-null values are distinct.
    if non_null == 0:
        return "other"
    return "text" if distinct > non_null * 0.5 else "categorical"


def pandas_kind(series: pd.Series) -> Kind:
    """`evidently.core.datasets.infer_column_type`, which names columns by pandas dtype name: so
    `uint8` (not "int...") and nullable `Int64` / `Float64` are neither numeric nor categorical."""
    name = series.dtype.name
    if name.startswith("float"):
        return "numeric"
    if name.startswith("int"):
        return _integer_kind(series.nunique())
    if name in ("string", "str"):
        return _string_kind(series.nunique(), int(series.count()))
    if name == "object":
        values = series.dropna()
        # Evidently looks at the first and the last non-null value only.
        if len(values) and isinstance(values.iloc[0], str) and isinstance(values.iloc[-1], str):
            return _string_kind(series.nunique(), int(series.count()))
        return "other"
    if name in ("bool", "category"):
        return "categorical"
    return "other"


def arrow_kind(column: pa.ChunkedArray) -> Kind:
    """`pandas_kind` of `column.to_pandas()`, without converting: integers with nulls become
    float64 (numeric) and booleans with nulls an object column of bools (neither); dictionaries
    become `category`; strings become objects holding str."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return "categorical"
    if pa.types.is_floating(kind) or (pa.types.is_integer(kind) and column.null_count):
        return "numeric"
    if pa.types.is_signed_integer(kind):
        return _integer_kind(pc.count_distinct(column).as_py())
    if pa.types.is_boolean(kind):
        return "other" if column.null_count else "categorical"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        non_null = len(column) - column.null_count
        return _string_kind(pc.count_distinct(column).as_py(), non_null)
    return "other"


def column_kind(column: Column) -> Kind:
    return arrow_kind(column) if isinstance(column, pa.ChunkedArray) else pandas_kind(column)


def is_integer(column: Column) -> bool:
    """Whether the column is an integer dtype as pandas holds it (numpy widens the Sturges
    histogram bins of integers)."""
    if isinstance(column, pa.ChunkedArray):
        return pa.types.is_integer(column.type) and column.null_count == 0
    return column.dtype.kind in "iu"


def dtype_name(column: Column) -> str:
    """The column's type as an error message names it."""
    return str(column.type if isinstance(column, pa.ChunkedArray) else column.dtype)


def sorted_numbers(column: Column) -> tuple[np.ndarray, int]:
    """The finite values of a numeric column as float64, sorted, and how many rows were left out.

    Nulls, NaN and +-inf are left out, as Evidently's `get_one_column_drift` drops them. The
    caller's data is never sorted in place: only the copy that leaving rows out makes.
    """
    if isinstance(column, pa.ChunkedArray):
        kind = column.type
        if not any(is_type(kind) for is_type in NUMBER_TYPES):
            raise TypeError(f"holds {kind} values, not numbers")
        if kind != pa.float64():
            # Not a safe cast: int64 beyond 2**53 rounds, as pandas rounds it for Evidently.
            column = pc.cast(column, pa.float64(), safe=False)
        values = column.to_numpy()  # nulls -> NaN
    else:
        if not pd.api.types.is_numeric_dtype(column.dtype):
            raise TypeError(f"holds {column.dtype} values, not numbers")
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    left_out = int(finite.size - np.count_nonzero(finite))
    if not left_out:
        return np.sort(values), 0
    values = values[finite]
    values.sort()
    return values, left_out


def category_counts(column: Column) -> tuple[pa.Array, np.ndarray, int]:
    """(distinct usable values, their counts, rows left out) of a categorical column.

    Nulls are left out, as Evidently drops them.
    """
    if not isinstance(column, pa.ChunkedArray):
        try:
            column = pa.chunked_array([pa.array(column, from_pandas=True)])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TypeError(f"holds {column.dtype} values Arrow cannot type: {exc}") from None
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    counted = pc.value_counts(column)
    values, counts = counted.field("values"), counted.field("counts")
    usable = values.is_valid()
    left_out = pc.sum(counts.filter(pc.invert(usable))).as_py() or 0
    return values.filter(usable), counts.filter(usable).to_numpy(), left_out


def sample_rows(table: pa.Table, max_rows: int, rng: np.random.Generator) -> pa.Table:
    """At most `max_rows` rows of `table`, drawn uniformly without replacement, in table order."""
    if table.num_rows <= max_rows:
        return table
    picked = rng.choice(table.num_rows, size=max_rows, replace=False)
    picked.sort()
    return table.take(pa.array(picked))


def missing_values(column: pa.Array | pa.ChunkedArray) -> int:
    """Nulls, and NaN of floats: what an export's statistics count as `null_count`."""
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += pc.sum(pc.is_nan(column)).as_py() or 0
    return missing
