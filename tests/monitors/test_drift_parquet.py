"""The streamed drift check of Parquet files against the whole-table one, and its counting against
a naive count of every row."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitors.columns import numpy_of, sorted_numbers, tally_chunks
from monitors.drift import DriftInputError, DriftResult, check_drift
from monitors.drift_parquet import check_drift_parquet

INT64 = st.integers(-(2**63), 2**63 - 1)
CATEGORY_VALUES = st.one_of(
    st.lists(st.none() | st.text(max_size=4), max_size=60),  # unicode, empty strings, nulls
    st.lists(st.none() | st.sampled_from(["ä", "数", "🙂", ""]), max_size=60),  # few categories
    st.lists(st.none() | INT64, max_size=60),  # 64-bit extremes
    st.lists(st.none() | st.booleans(), max_size=60),
    st.lists(st.none(), max_size=10),  # nothing but nulls, or nothing at all
)


def chunked(values: list, cuts: list[int], dictionary: bool) -> pa.ChunkedArray:
    """`values` as Arrow chunks split at `cuts`, dictionary-encoded (each chunk its own
    dictionary, as each Parquet batch has) or plain."""
    array = pa.array(values)
    if array.type == pa.null():
        array = array.cast(pa.string())
    bounds = sorted({0, len(values), *(c % (len(values) + 1) for c in cuts)})
    chunks = [array.slice(a, b - a) for a, b in pairwise(bounds)]
    if dictionary:
        chunks = [chunk.dictionary_encode() for chunk in chunks]
    kind = pa.dictionary(pa.int32(), array.type) if dictionary else array.type
    return pa.chunked_array(chunks, type=kind)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    values=CATEGORY_VALUES,
    cuts=st.lists(st.integers(0, 60), max_size=6),
    dictionary=st.booleans(),
)
def test_tally_of_chunks_is_a_count_of_every_row(values, cuts, dictionary):
    column = chunked(values, cuts, dictionary)
    distinct, counts, left_out = tally_chunks(column.chunks, column.type)
    assert dict(zip(distinct.to_pylist(), counts.tolist(), strict=True)) == Counter(
        v for v in values if v is not None
    )
    assert left_out == values.count(None)


def test_tally_merges_partial_counts_of_a_huge_cardinality():
    # 300k distinct values over 3 chunks: partial counts are merged on the way (above
    # MERGE_ABOVE), each value's counts summed across the merges.
    values = np.arange(300_000) % 200_000
    chunks = [pa.array(part) for part in np.array_split(values, 3)]
    distinct, counts, left_out = tally_chunks(chunks, pa.int64())
    expected = Counter(values.tolist())
    assert dict(zip(distinct.to_pylist(), counts.tolist(), strict=True)) == expected
    assert left_out == 0


NUMBERS = st.lists(st.none() | st.floats(allow_nan=True, allow_infinity=True), max_size=40)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(values=NUMBERS, start=st.integers(0, 40), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_numbers_read_from_arrow_buffers(values, start, cuts):
    """`numpy_of` (a slice's offset, its nulls as NaN) and `sorted_numbers` of chunks, against
    Python's own reading of the values."""
    sliced = pa.array(values, pa.float64()).slice(min(start, len(values)))
    expected = [math.nan if v is None else v for v in sliced.to_pylist()]
    np.testing.assert_array_equal(numpy_of(sliced), np.array(expected, np.float64))
    column = chunked(values, cuts, dictionary=False).cast(pa.float64())
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    numbers, left_out = sorted_numbers(column)
    assert numbers.tolist() == finite
    assert left_out == len(values) - len(finite)


def test_numpy_of_refuses_what_has_no_numpy_form():
    with pytest.raises(TypeError, match="string values have no fixed-width numpy form"):
        numpy_of(pa.array(["a"]))
    with pytest.raises(TypeError, match="int64 values with nulls"):
        numpy_of(pa.array([1, None]))


# ---------------------------------------------------------------------------------------------
# The streamed check gives check_drift's result


def random_window(seed: int, rows: int, later: bool) -> pa.Table:
    """Columns of every kind the check infers, some drifting, with nulls, NaN and inf."""
    rng = np.random.default_rng([seed, int(later)])
    shift = 0.3 if later else 0.0
    floats = rng.normal(shift, 1.0, rows)
    floats[rng.random(rows) < 0.05] = np.nan
    floats[rng.random(rows) < 0.01] = np.inf
    letters = rng.choice(["a", "b", "ä", "🙂"] + (["new"] if later else []), rows)
    return pa.table(
        {
            "floats": pa.array(floats, mask=rng.random(rows) < 0.05),
            "wide_ints": pa.array(rng.integers(-(2**62), 2**62, rows)),
            "codes": pa.array(rng.integers(0, 4 if later else 3, rows)),
            "codes_with_nulls": pa.array(rng.integers(0, 3, rows), mask=rng.random(rows) < 0.1),
            "flags": pa.array(rng.random(rows) < (0.5 + shift)),
            "letters": pa.array(letters, mask=rng.random(rows) < (0.3 if later else 0.02)),
            "one_value": pa.array(["x"] * rows),
            "categories": pa.array(letters).dictionary_encode(),
            "text": pa.array([f"t{i}" for i in rng.permutation(rows)]),
        }
    )


def same_result(a: DriftResult, b: DriftResult) -> bool:
    def key(result: DriftResult) -> list[tuple]:
        return [
            tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in vars(c).values())
            for c in result.columns
        ]

    return (key(a), a.drift_share, a.skipped) == (key(b), b.drift_share, b.skipped)


def check_both(reference: pa.Table, current: pa.Table, row_group: int, **options):
    """(check_drift's result or error message, check_drift_parquet's), the tables written to
    Parquet in row groups of `row_group` rows and read back for check_drift."""
    with tempfile.TemporaryDirectory() as directory:
        paths = [Path(directory, f"{side}.parquet") for side in ("reference", "current")]
        for table, path in zip((reference, current), paths):
            pq.write_table(table, path, row_group_size=row_group)
        outcomes = []
        for run in (
            lambda: check_drift(pq.read_table(paths[0]), pq.read_table(paths[1]), **options),
            lambda: check_drift_parquet(*paths, **options),
        ):
            try:
                outcomes.append(run())
            except DriftInputError as exc:
                outcomes.append(str(exc))
        return outcomes


COLUMN_SETS = st.sampled_from(
    [
        ["floats", "wide_ints", "codes", "codes_with_nulls", "flags", "letters", "categories"],
        ["one_value", "letters"],
        ["text"],  # refused as free text by both
        None,  # every column: the text column is refused
    ]
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    reference_rows=st.sampled_from([1, 7, 200, 1001, 3000]),
    current_rows=st.sampled_from([1, 9, 300, 2500]),
    row_group=st.sampled_from([3, 64, 1000, 100_000]),  # 3: a batch of a few rows
    columns=COLUMN_SETS,
    threads=st.sampled_from([1, 3]),
)
def test_streamed_check_gives_the_whole_table_verdicts(
    seed, reference_rows, current_rows, row_group, columns, threads
):
    reference = random_window(seed, reference_rows, later=False)
    current = random_window(seed, current_rows, later=True)
    whole, streamed = check_both(reference, current, row_group, columns=columns, threads=threads)
    if isinstance(whole, str):
        assert streamed == whole
    else:
        assert isinstance(streamed, DriftResult), streamed
        assert same_result(whole, streamed)


def test_streamed_check_takes_the_same_options():
    reference = random_window(1, 2000, later=False)
    current = random_window(1, 2000, later=True)
    options = {
        "columns": ["floats", "codes", "letters"],
        "methods": {"floats": "psi", "letters": "chisquare"},
        "thresholds": {"codes": 0.2},
        "kinds": {"codes": "numeric"},
        "drift_share": 0.3,
    }
    whole, streamed = check_both(reference, current, 300, **options)
    assert isinstance(whole, DriftResult) and same_result(whole, streamed)
    assert [c.method for c in streamed.columns] == ["psi", "jensenshannon", "chisquare"]
    wrong, wrong_streamed = check_both(reference, current, 300, columns=["nope"])
    assert (
        wrong == wrong_streamed == "cannot check columns 'nope' (not in current data), "
        "'nope' (not in reference data)"
    )


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "current.parquet"
    bad.write_text("not parquet")
    good = tmp_path / "reference.parquet"
    pq.write_table(pa.table({"x": [1.0]}), good)
    with pytest.raises(DriftInputError, match=f"cannot read the current data {bad}"):
        check_drift_parquet(good, bad)


def test_empty_file_is_refused(tmp_path):
    empty, reference = tmp_path / "current.parquet", tmp_path / "reference.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.float64())}), empty)
    pq.write_table(pa.table({"x": [1.0]}), reference)
    with pytest.raises(DriftInputError, match="the current data has no rows"):
        check_drift_parquet(reference, empty)


def test_an_arrow_only_check_does_not_import_pandas(tmp_path):
    """pandas' import is ~45 MiB of the check's peak RSS: the Arrow path must not pull it in."""
    path = tmp_path / "window.parquet"
    pq.write_table(random_window(3, 2000, later=False).drop(["text"]), path)
    script = (
        "import sys\n"
        "from monitors.drift_parquet import check_drift_parquet\n"
        f"result = check_drift_parquet({str(path)!r}, {str(path)!r})\n"
        "assert len(result.columns) == 8, result\n"
        "print('pandas' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"
