"""check_drift against Evidently's own Report([DataDriftPreset()]) on the same generated data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from evidently import Report
from evidently.core.datasets import infer_column_type
from evidently.presets import DataDriftPreset

from monitors.columns import arrow_kind, pandas_kind
from monitors.drift import DriftInputError, DriftResult, check_drift
from monitors.stattests import METHODS

# Evidently names the method it picked by display name, the one it was given by name.
BY_DISPLAY_NAME = {m.display_name: name for name, m in METHODS.items()} | {n: n for n in METHODS}
MARGIN = 0.05  # verdicts must agree where Evidently's statistic is this far from its threshold


def windows(n_ref: int, n_cur: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current windows: some columns drift, some do not, some are borderline."""
    rng = np.random.default_rng(seed)

    def frame(n: int, later: bool) -> pd.DataFrame:
        shift = 1.0 if later else 0.0
        nulls_same = rng.normal(10, 2, n)
        nulls_shifted = rng.normal(10 + 1.5 * shift, 2, n)
        if later:  # a null burst: 40% of the current rows lose the value
            nulls_same[rng.random(n) < 0.4] = np.nan
            nulls_shifted[rng.random(n) < 0.4] = np.nan
        countries = ["DE", "FR", "NL", "PL"] + (["XX"] if later else [])
        return pd.DataFrame(
            {
                "steady": rng.normal(0, 1, n),
                "mean_shift": rng.normal(0.5 * shift, 1, n),
                "variance_change": rng.normal(0, 1 + 0.6 * shift, n),
                "slight_shift": rng.normal(0.08 * shift, 1, n),
                "amount": rng.lognormal(3, 1, n) * (1 + 0.3 * shift),
                "count": rng.integers(0, 500, n),
                "few_levels": rng.choice([0.0, 0.5, 1.0, 2.0], n, p=[0.4, 0.3, 0.2, 0.1] if not later else [0.25, 0.3, 0.25, 0.2]),
                "nulls_same": nulls_same,
                "nulls_shifted": nulls_shifted,
                "channel": rng.choice(["web", "app", "pos"], n),
                "country": rng.choice(countries, n),
                "tier": rng.choice(5, n, p=[0.5, 0.2, 0.1, 0.1, 0.1] if not later else [0.3, 0.3, 0.2, 0.1, 0.1]),
                "is_weekend": rng.random(n) < (0.28 + 0.02 * shift),
                "device": pd.Categorical(rng.choice(["ios", "android", "other"], n)),
            }
        )  # fmt: skip

    return frame(n_ref, False), frame(n_cur, True)


@dataclass(frozen=True)
class Theirs:
    method: str
    statistic: float
    threshold: float
    drifted: bool


def evidently_report(
    reference: pd.DataFrame, current: pd.DataFrame, **options: object
) -> tuple[dict[str, Theirs], dict]:
    """Evidently's per-column results (from its ValueDrift tests) and DriftedColumnsCount."""
    snapshot = Report([DataDriftPreset(**options)], include_tests=True).run(current, reference)
    result = snapshot.dict()
    values = {metric["id"]: metric["value"] for metric in result["metrics"]}
    [count] = [m["value"] for m in result["metrics"] if "DriftedColumnsCount" in m["metric_name"]]
    columns = {}
    for test in result["tests"]:
        if test["id"] != "drift":
            continue
        params = test["metric_config"]["params"]
        columns[params["column"]] = Theirs(
            method=BY_DISPLAY_NAME[params["method"]],
            statistic=float(values[test["metric_config"]["metric_id"]]),
            threshold=params["threshold"],
            drifted=test["status"] == "FAIL",
        )
    return columns, count


def assert_same_as_evidently(ours: DriftResult, theirs: dict[str, Theirs], count: dict) -> int:
    """Same columns, methods, thresholds and statistics; same verdicts off the margin. Returns
    how many verdicts were compared."""
    assert {c.column for c in ours.columns} == set(theirs)
    compared = 0
    for column in ours.columns:
        their = theirs[column.column]
        assert (column.method, column.threshold) == (their.method, their.threshold), column.column
        assert column.statistic == pytest.approx(their.statistic, rel=1e-6, abs=1e-9), column
        if abs(their.statistic - their.threshold) >= MARGIN * their.threshold:
            assert column.drifted == their.drifted, column
            compared += 1
    if compared == len(ours.columns):
        assert (ours.drifted_columns, ours.share) == (count["count"], count["share"])
    return compared


@pytest.fixture(scope="module")
def large() -> tuple[pd.DataFrame, pd.DataFrame]:
    return windows(20_000, 15_000)


@pytest.fixture(scope="module")
def large_evidently(large) -> tuple[dict[str, Theirs], dict]:
    return evidently_report(*large)


@pytest.mark.parametrize("source", ["pandas", "arrow"])
def test_default_verdicts_match_evidently(large, large_evidently, source: str) -> None:
    reference, current = large
    if source == "arrow":
        reference, current = pa.Table.from_pandas(reference), pa.Table.from_pandas(current)
    ours = check_drift(reference, current)
    theirs, count = large_evidently
    assert assert_same_as_evidently(ours, theirs, count) == len(theirs)
    drifted = {c.column for c in ours.columns if c.drifted}
    # The generator's intent, so the comparison above covers both verdicts.
    assert drifted == {
        "mean_shift", "variance_change", "amount", "few_levels", "nulls_shifted", "country",
        "tier",
    }  # fmt: skip
    assert {c.column: c.method for c in ours.columns if c.column in ("steady", "tier")} == {
        "steady": "wasserstein",
        "tier": "jensenshannon",
    }


# Evidently's chi-squared divides by the zero expected count of the new country.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_small_reference_verdicts_match_evidently() -> None:
    """A reference of <= 1000 rows: K-S, chi-squared and Z-tests."""
    reference, current = windows(800, 1200, seed=1)
    theirs, count = evidently_report(reference, current)
    ours = check_drift(reference, current)
    assert assert_same_as_evidently(ours, theirs, count) >= len(theirs) - 1
    assert {c.method for c in ours.columns} == {"ks", "chisquare", "z"}


def test_per_column_methods_and_thresholds_match_evidently(large) -> None:
    methods = {
        "steady": "psi",
        "mean_shift": "ks",
        "count": "jensenshannon",
        "few_levels": "psi",
        "channel": "z",  # 3 values: "the smallest value" vs the rest
        "is_weekend": "chisquare",
        "device": "psi",
    }
    thresholds = {"variance_change": 0.5, "country": 0.5, "slight_shift": 0.05}
    theirs, count = evidently_report(
        *large, per_column_method=methods, per_column_threshold=thresholds
    )
    ours = check_drift(*large, methods=methods, thresholds=thresholds)
    assert assert_same_as_evidently(ours, theirs, count) >= len(theirs) - 1
    by_column = {c.column: c for c in ours.columns}
    assert {name: by_column[name].method for name in methods} == methods
    assert not by_column["variance_change"].drifted  # drifted at the default 0.1


def test_z_test_tells_the_smallest_value_from_the_rest() -> None:
    """Values first seen in another order than sorted: the Z-test still splits off "a"."""
    reference = pd.DataFrame({"x": ["b"] * 50 + ["a"] * 30 + ["c"] * 20})
    current = pd.DataFrame({"x": ["c"] * 40 + ["b"] * 30 + ["a"] * 40})
    theirs, count = evidently_report(reference, current, per_column_method={"x": "z"})
    ours = check_drift(reference, current, methods={"x": "z"})
    assert assert_same_as_evidently(ours, theirs, count) == 1


def test_kinds_are_evidentlys_for_arrow_and_pandas_columns() -> None:
    n = 100
    rng = np.random.default_rng(2)
    with_nulls = pa.array(rng.integers(0, 3, n), mask=np.arange(n) % 7 == 0)
    table = pa.table(
        {
            "float32": pa.array(rng.normal(size=n), pa.float32()),
            "int_few": rng.integers(0, 10, n),
            "int_ten": np.arange(n) % 10,
            "int_eleven": np.arange(n) % 11,
            "int_with_nulls": with_nulls,
            "uint": pa.array(rng.integers(0, 100, n), pa.uint8()),
            "bool": rng.random(n) < 0.5,
            "bool_with_nulls": pa.array(rng.random(n) < 0.5, mask=np.arange(n) % 9 == 0),
            "labels": rng.choice(["a", "b", "c"], n),
            "free_text": [f"note {i}" for i in range(n)],
            "half_distinct": [f"note {i % (n // 2)}" for i in range(n)],
            "large_string": pa.array(rng.choice(["x", "y"], n), pa.large_string()),
            "dictionary": pa.array(rng.choice(["x", "y"], n)).dictionary_encode(),
            "timestamp": pa.array(np.arange(n), pa.timestamp("s")),
            "all_null_strings": pa.array([None] * n, pa.string()),
        }
    )
    frame = table.to_pandas()
    expected = {
        "num": "numeric",
        "cat": "categorical",
        "text": "text",
    }
    for name in table.column_names:
        theirs = expected.get(infer_column_type(frame[name]).value, "other")
        assert arrow_kind(table.column(name)) == theirs, name
        assert pandas_kind(frame[name]) == theirs, name


def test_left_out_rows_are_counted_per_side() -> None:
    null_fourth = np.tile([False, False, False, True, False], 300)
    reference = pa.table({"x": pa.array([1.0, np.nan, np.inf, 4.0, 5.0] * 300, mask=null_fourth)})
    current = pa.table({"x": np.array([1.0, 2.0, -np.inf] * 500)})
    [column] = check_drift(reference, current).columns
    assert (column.reference_rows, column.reference_nulls) == (1500, 900)
    assert (column.current_rows, column.current_nulls) == (1500, 500)


def test_chunked_and_single_chunk_arrow_give_the_same_result(large) -> None:
    reference, current = (pa.Table.from_pandas(frame) for frame in large)
    chunked = pa.concat_tables([current.slice(0, 4000), current.slice(4000)])
    assert chunked.column("steady").num_chunks == 2
    assert check_drift(reference, chunked, threads=1) == check_drift(reference, current, threads=2)


def test_dataset_drift_is_a_share_at_or_above_drift_share() -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({f"c{i}": rng.normal(0, 1, 2000) for i in range(4)})
    current = pd.DataFrame({f"c{i}": rng.normal(2.0 if i < 2 else 0.0, 1, 2000) for i in range(4)})
    result = check_drift(reference, current)
    assert (result.drifted_columns, result.share, result.dataset_drift) == (2, 0.5, True)
    assert not check_drift(reference, current, drift_share=0.51).dataset_drift


def test_columns_evidently_does_not_check_are_skipped_with_the_reason() -> None:
    table = pa.table({"x": np.arange(50.0), "ts": pa.array(np.arange(50), pa.timestamp("s"))})
    result = check_drift(table, table)
    assert [c.column for c in result.columns] == ["x"]
    assert result.skipped == {
        "ts": "timestamp[s] values: Evidently infers no numeric or categorical kind for them"
    }
    with pytest.raises(DriftInputError, match=r"cannot check column 'ts': timestamp\[s\]"):
        check_drift(table, table, columns=["x", "ts"])


@pytest.mark.parametrize(
    ("reference", "current", "options", "message"),
    [
        ({"x": [1.0] * 5}, {"y": [1.0] * 5}, {"columns": ["y"]}, r"'y' \(not in reference data\)"),
        ({"t": ["a", "b"] * 5}, {"t": [f"n{i}" for i in range(10)]}, {}, "column 't' holds free text"),
        ({"x": [np.nan] * 5}, {"x": [1.0] * 5}, {}, "column 'x' has no usable value in the reference data: all of its 5 rows"),
        ({"x": [1.0] * 5}, {"x": [1.0] * 5}, {"methods": {"x": "kl_div"}}, "column 'x': unknown drift method 'kl_div'"),
        ({"x": [1.0] * 5}, {"x": [1.0] * 5}, {"methods": {"x": "chisquare"}}, "'chisquare' does not apply to numeric columns"),
        ({"x": [1.0] * 5}, {"x": [1.0] * 5}, {"thresholds": {"z": 0.1}}, r"thresholds name columns that are not checked: \['z'\]"),
        ({"x": [1.0] * 5}, {"x": [1.0] * 5}, {"drift_share": 1.5}, "drift_share 1.5 is not a share"),
        ({"x": ["a"] * 5}, {"x": [1.0] * 5}, {}, "numeric column 'x' in the reference data holds object values"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_by_name(reference, current, options, message) -> None:
    with pytest.raises(DriftInputError, match=message):
        check_drift(pd.DataFrame(reference), pd.DataFrame(current), **options)


def test_given_kinds_override_the_inferred_kind_and_bad_kinds_are_named() -> None:
    rng = np.random.default_rng(3)
    # Few distinct integers: Evidently's rule calls the column categorical...
    reference = pa.table({"n": rng.integers(0, 5, 2_000)})
    current = pa.table({"n": rng.integers(0, 5, 2_000)})
    assert check_drift(reference, current).columns[0].kind == "categorical"
    # ...a monitor whose baseline says numeric keeps it numeric in every window.
    kept = check_drift(reference, current, kinds={"n": "numeric"}).columns[0]
    assert kept.kind == "numeric"
    with pytest.raises(DriftInputError, match="'n': kind 'text'"):
        check_drift(reference, current, kinds={"n": "text"})


def _labels(seed: int, n: int = 2_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, n), rng.integers(0, 3, n), rng.integers(0, 2, n)


@pytest.mark.parametrize(
    ("change", "drifted", "apart"),
    [
        # Labels of another kind of value share no category: drift, as in Evidently.
        (lambda ref, cur, binary: (ref, cur.astype(str)), True, True),
        (lambda ref, cur, binary: (ref[:20], cur[:20].astype(str)), True, True),  # chi-squared
        # Numbers and booleans compare by value, as in Python (1 == True): the 2s are gone.
        (lambda ref, cur, binary: (ref, binary.astype(bool)), True, False),
        (lambda ref, cur, binary: (binary, binary[::-1].astype(bool)), False, False),
        (lambda ref, cur, binary: (ref.astype(np.int32), cur), False, False),
        (lambda ref, cur, binary: (ref.astype(np.uint64) + 2**60, cur + 2**60), False, False),
        (lambda ref, cur, binary: (ref.astype(str), pd.Categorical(cur.astype(str))), False, False),
    ],
)
def test_a_type_change_between_the_sides_is_judged_as_evidently_judges_it(
    change, drifted, apart
) -> None:
    reference, current = change(*_labels(4))
    reference, current = pd.DataFrame({"c": reference}), pd.DataFrame({"c": current})
    theirs, _ = evidently_report(reference, current)
    [ours] = check_drift(reference, current).columns
    their = theirs["c"]
    assert (ours.method, ours.drifted) == (their.method, their.drifted)
    assert ours.statistic == pytest.approx(their.statistic, rel=1e-9, abs=1e-12)
    assert ours.drifted is drifted
    assert (ours.warning is not None and "no category is shared" in ours.warning) is apart
    # Arrow tables say the same.
    [arrow] = check_drift(pa.table(reference), pa.table(current)).columns
    assert (arrow.statistic, arrow.drifted) == pytest.approx((ours.statistic, ours.drifted))


@pytest.mark.parametrize("method", [None, "wasserstein", "psi", "jensenshannon"])
def test_a_statistic_the_values_overflow_is_flagged_never_clean(method) -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"x": np.append(rng.normal(0, 1, 1_999), -1e308)})
    current = pd.DataFrame({"x": np.append(rng.normal(0, 1, 1_999), 1e308)})
    [column] = check_drift(reference, current, methods={"x": method} if method else None).columns
    assert math.isnan(column.statistic)
    assert column.drifted
    assert "statistic is NaN: the values span -1e+308 to 1e+308" in column.warning


def test_a_rank_statistic_of_the_same_values_is_still_read() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"x": np.append(rng.normal(0, 1, 1_999), -1e308)})
    current = pd.DataFrame({"x": np.append(rng.normal(0, 1, 1_999), 1e308)})
    [column] = check_drift(reference, current, methods={"x": "ks"}).columns
    assert not column.drifted and column.warning is None and column.statistic > 0.05


def test_a_nan_statistic_of_a_single_value_is_flagged() -> None:
    """Chi-squared has no degrees of freedom on one value: scipy's NaN, flagged for a look."""
    frame = pd.DataFrame({"c": ["a"] * 30})
    [column] = check_drift(frame, frame, methods={"c": "chisquare"}).columns
    assert math.isnan(column.statistic) and column.drifted
    assert column.warning == "the chisquare statistic is NaN"
