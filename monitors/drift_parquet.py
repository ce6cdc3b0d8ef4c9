"""`check_drift` of two Parquet files, read a column at a time: the same verdicts in a fraction
of the memory.

`check_drift` holds both tables whole: at 1M + 1M rows x 10 categorical columns, 142 MiB of
Arrow buffers and ~100 MiB more of the reader's scratch. Here each column is read when its test
runs and let go after it:

- categorical columns are counted batch by batch (`monitors.columns.tally_chunks`), strings
  read dictionary-encoded, so a column costs its distinct values, not its rows;
- numeric columns are read whole, one at a time, for their sort (`monitors.columns.sorted_numbers`
  copies them into the float64 array the tests need, so the Arrow column goes at once);
- the Arrow pool hands what a column freed back to the OS before the next one is read.

Kinds are inferred from the current file as `check_drift` infers them from the current table
(`monitors.columns.type_kind`, from the batch-by-batch counts), so both give the same verdicts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from monitors.columns import (
    CategoryTally,
    Kind,
    is_string_type,
    kind_depends_on_values,
    tally_chunks,
    type_kind,
)
from monitors.drift import (
    BuiltSample,
    ColumnDrift,
    DriftInputError,
    DriftResult,
    category_sample,
    check_options,
    judge_column,
    numeric_sample,
    select_columns,
)
from monitors.stattests import ColumnKind

# Rows per batch when counting: 256 KiB of dictionary indices, whatever the column's values.
BATCH_ROWS = 1 << 16


class _ParquetSide:
    """One file's columns, read on demand: a column whole, or a categorical column's counts."""

    def __init__(self, path: Path, side: str):
        try:
            self.file = pq.ParquetFile(path, pre_buffer=False)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DriftInputError(f"cannot read the {side} data {path}: {exc}") from None
        self.path, self.side = path, side
        self.schema = self.file.schema_arrow
        self.rows = self.file.metadata.num_rows

    def type_of(self, name: str) -> pa.DataType:
        return self.schema.field(name).type

    def column(self, name: str) -> pa.ChunkedArray:
        return self.file.read(columns=[name], use_threads=False).column(0)

    def tally(self, name: str) -> CategoryTally:
        # Strings are read as dictionary indices: counting them never decodes a row's string.
        dictionary = [name] if is_string_type(self.type_of(name)) else None
        reader = pq.ParquetFile(self.path, pre_buffer=False, read_dictionary=dictionary)
        batches: Iterator[pa.RecordBatch] = reader.iter_batches(
            batch_size=BATCH_ROWS, columns=[name], use_threads=False
        )
        kind = reader.schema_arrow.field(name).type
        return tally_chunks((batch.column(0) for batch in batches), kind)


def check_drift_parquet(
    reference: Path,
    current: Path,
    *,
    columns: Sequence[str] | None = None,
    methods: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    drift_share: float = 0.5,
    kinds: Mapping[str, ColumnKind] | None = None,
    threads: int | None = None,
) -> DriftResult:
    """`monitors.drift.check_drift` of the Parquet files `reference` and `current`, with the same
    options; `threads` columns are read and tested at once, so memory grows with them."""
    methods, thresholds = dict(methods or {}), dict(thresholds or {})
    ref_side, cur_side = _ParquetSide(reference, "reference"), _ParquetSide(current, "current")
    for side in (ref_side, cur_side):
        if side.rows == 0:
            raise DriftInputError(f"the {side.side} data has no rows")
    # The current counts that decided a column's kind are kept for its test (they are small
    # where the column is categorical; a text column is refused).
    current_tallies: dict[str, CategoryTally] = {}

    def infer_kind(name: str) -> Kind:
        kind = cur_side.type_of(name)
        if not kind_depends_on_values(kind):
            return type_kind(kind, cur_side.rows, 0, lambda: 0)
        tally = current_tallies[name] = cur_side.tally(name)
        values, _, nulls = tally
        return type_kind(kind, cur_side.rows, nulls, lambda: len(values))

    chosen, skipped = select_columns(
        cur_side.schema.names, ref_side.schema.names, columns, kinds or {}, infer_kind,
        lambda name: str(cur_side.type_of(name)),
    )  # fmt: skip
    check_options(chosen, methods, thresholds, drift_share)

    def sample_of(name: str) -> BuiltSample:
        if chosen[name] == "numeric":
            current_tallies.pop(name, None)
            return numeric_sample(name, ref_side.column(name), cur_side.column(name))
        current_tally = current_tallies.pop(name, None) or cur_side.tally(name)
        return category_sample(ref_side.tally(name), current_tally)

    def check(name: str) -> ColumnDrift:
        built = sample_of(name)
        # What reading the column took from Arrow's pool goes back to the OS before the next.
        pa.default_memory_pool().release_unused()
        return judge_column(
            name, chosen[name], built, (ref_side.rows, cur_side.rows), methods.get(name),
            thresholds.get(name),
        )  # fmt: skip

    workers = threads or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(chosen)))) as pool:
        checked = tuple(pool.map(check, chosen))
    return DriftResult(columns=checked, drift_share=drift_share, skipped=skipped)
