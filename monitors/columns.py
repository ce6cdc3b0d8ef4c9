"""What a drift check reads from a column: its kind, as Evidently infers it, and its usable values.

Columns come from Arrow tables (our exports and feature logs are Parquet) or pandas DataFrames.
Arrow columns are read as Arrow or numpy buffers, never as pandas object columns; their kind is
the kind Evidently would infer for the same column after `Table.to_pandas()`. pandas is imported
only where a pandas column is given: its import alone is ~45 MiB of RSS, a drift check of Arrow
data needs none of it. (So Arrow buffers are viewed with `numpy_of`, not `Array.to_numpy`, whose
first call imports pandas.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd

Column: TypeAlias = "pa.ChunkedArray | pd.Series"
# (distinct non-null values, their counts, rows left out as null) of one categorical column.
CategoryTally: TypeAlias = tuple[pa.Array, np.ndarray, int]

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


def is_string_type(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def kind_depends_on_values(kind: pa.DataType) -> bool:
    """Whether `type_kind` of a column of this type asks for its nulls and distinct values."""
    return pa.types.is_integer(kind) or pa.types.is_boolean(kind) or is_string_type(kind)


def type_kind(kind: pa.DataType, rows: int, nulls: int, distinct: Callable[[], int]) -> Kind:
    """`pandas_kind` of `column.to_pandas()` for an Arrow column of type `kind`, `rows` long,
    `nulls` of them null, `distinct()` distinct non-null values (asked only for integers and
    strings; `nulls` is read only where `kind_depends_on_values`): integers with nulls become
    float64 (numeric) and booleans with nulls an object column of bools (neither); dictionaries
    become `category`; strings become objects holding str."""
    if pa.types.is_dictionary(kind):
        return "categorical"
    if pa.types.is_floating(kind) or (pa.types.is_integer(kind) and nulls):
        return "numeric"
    if pa.types.is_signed_integer(kind):
        return _integer_kind(distinct())
    if pa.types.is_boolean(kind):
        return "other" if nulls else "categorical"
    if is_string_type(kind):
        return _string_kind(distinct(), rows - nulls)
    return "other"


def arrow_kind(column: pa.ChunkedArray) -> Kind:
    """`type_kind` of an Arrow column."""
    return type_kind(
        column.type, len(column), column.null_count, lambda: pc.count_distinct(column).as_py()
    )


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


def numpy_of(array: pa.Array) -> np.ndarray:
    """A fixed-width numeric Arrow array as numpy values, nulls as NaN (floats only): a view of
    its buffer where it has no nulls. `Array.to_numpy` gives the same, but imports pandas."""
    kind = array.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise TypeError(f"{kind} values have no fixed-width numpy form")
    dtype = np.dtype(kind.to_pandas_dtype())
    if len(array) == 0:  # may have no buffers at all
        return np.empty(0, dtype)
    values = np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)
    if not array.null_count:
        return values
    if dtype.kind != "f":
        raise TypeError(f"{kind} values with nulls have no numpy form but floats")
    valid = np.unpackbits(np.frombuffer(array.buffers()[0], np.uint8), bitorder="little")
    return np.where(valid[array.offset : array.offset + len(array)].view(bool), values, np.nan)


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
        chunks = [numpy_of(chunk) for chunk in column.chunks]  # nulls -> NaN
        # A view of the caller's buffer when one chunk: only sorted as a copy below.
        values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks or [np.empty(0)])
    else:
        import pandas as pd

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


def category_counts(column: Column) -> CategoryTally:
    """(distinct usable values, their counts, rows left out) of a categorical column.

    Nulls are left out, as Evidently drops them.
    """
    if not isinstance(column, pa.ChunkedArray):
        try:
            column = pa.chunked_array([pa.array(column, from_pandas=True)])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TypeError(f"holds {column.dtype} values Arrow cannot type: {exc}") from None
    return tally_chunks(column.chunks, column.type)


def tally_chunks(chunks: Iterable[pa.Array], kind: pa.DataType) -> CategoryTally:
    """`category_counts` of the column whose chunks (of type `kind`) arrive one at a time, as a
    Parquet reader's batches do: each is counted and let go, so only the distinct values of the
    column are ever held. A dictionary chunk is counted by its indices and only its distinct
    values are cast to the value type: its strings are never decoded row by row."""
    value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
    values: list[pa.Array] = []
    counts: list[np.ndarray] = []
    left_out = 0
    pending = 0  # partial counts held since the last merge
    merged = 0  # values of the last merge
    for chunk in chunks:
        counted = pc.value_counts(chunk)
        chunk_values = counted.field("values").cast(value_type)
        usable = chunk_values.is_valid()  # not null, nor a dictionary's null value
        usable_counts = numpy_of(counted.field("counts").filter(usable))
        left_out += len(chunk) - int(usable_counts.sum())
        values.append(chunk_values.filter(usable))
        counts.append(usable_counts)
        pending += len(counted)
        # Merged once the partials outgrow what merging keeps: memory stays a few times the
        # distinct values, and merging costs a few times their number in all.
        if pending > 2 * merged + MERGE_ABOVE:
            values, counts = _merge(values, counts, value_type)
            merged = pending = len(values[0])
    [all_values], [all_counts] = _merge(values, counts, value_type)
    return all_values, all_counts, left_out


# Partial counts are merged once they exceed twice the merged ones by this many values.
MERGE_ABOVE = 1 << 16


def _merge(
    values: list[pa.Array], counts: list[np.ndarray], value_type: pa.DataType
) -> tuple[list[pa.Array], list[np.ndarray]]:
    """One (values, counts) pair summing the partial counts of each (non-null) value.

    Summed by dictionary-encoding the values, not by `Table.group_by`, whose first call costs
    the process ~11 MiB of RSS (it loads and starts Arrow's Acero engine)."""
    all_values = pa.concat_arrays(values) if values else pa.nulls(0, value_type)
    encoded = pc.dictionary_encode(all_values)
    sums = np.zeros(len(encoded.dictionary), np.int64)
    if counts:
        np.add.at(sums, numpy_of(encoded.indices), np.concatenate(counts))
    return [encoded.dictionary], [sums]


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
