"""The pure evaluation of one window against its baseline's sample (no servers, no files)."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitors.config import parse_monitors
from monitors.rules import CHECKED, TOO_FEW_ROWS
from monitors.run_evaluation import NO_VALUES, evaluate_window

NAMES = {"v__amount": "v:amount", "v__count": "v:count", "v__channel": "v:channel"}
PROFILE = {
    "v__amount": {"kind": "numeric", "sample_null_rate": 0.0},
    "v__count": {"kind": "numeric", "sample_null_rate": 0.1},
    "v__channel": {"kind": "categorical", "sample_null_rate": 0.0},
}
REFERENCE = pa.table({
    "v__amount": pa.array([float(i % 50) for i in range(200)]),
    "v__count": pa.array([i % 7 for i in range(200)], pa.int64()),
    "v__channel": pa.array([("web", "pos", "app")[i % 3] for i in range(200)]),
})


def _monitor(min_rows: int = 1, drift: str = "{}"):
    return parse_monitors(f"""
monitors:
  m:
    feature_view: v
    window: {{rows: 100, min_rows: {min_rows}}}
    drift: {drift}
    rules: [{{kind: feature_drift}}]
""").monitors["m"]


def _check(window: pa.Table, **options):
    return evaluate_window(_monitor(**options), NAMES, PROFILE, REFERENCE, window)


def test_an_empty_window_is_too_few_rows_and_tests_nothing() -> None:
    check = _check(REFERENCE.slice(0, 0))
    assert (check.status, check.current_rows, check.reference_rows) == (TOO_FEW_ROWS, 0, 200)
    assert (check.outcomes, check.drifted, check.dataset_drift) == ({}, [], False)
    assert check.multivariate is None and check.testable == []


def test_a_window_below_min_rows_is_not_tested() -> None:
    check = _check(REFERENCE.slice(0, 99), min_rows=100)
    assert (check.status, check.current_rows, check.outcomes) == (TOO_FEW_ROWS, 99, {})
    assert _check(REFERENCE.slice(0, 100), min_rows=100).status == CHECKED


def test_the_window_equal_to_the_reference_drifts_nowhere() -> None:
    check = _check(REFERENCE)
    assert check.status == CHECKED
    assert set(check.outcomes) == set(NAMES.values()) == set(check.tested)
    assert (check.drifted, check.dataset_drift) == ([], False)
    assert check.outcomes["v:count"].reference_null_rate == 0.1  # from the baseline's profile
    assert all(o.current_null_rate == 0.0 for o in check.outcomes.values())


def test_an_all_null_column_is_drifted_with_no_values_and_the_others_are_tested() -> None:
    window = REFERENCE.set_column(1, "v__count", pa.nulls(200, pa.int64()))
    check = _check(window)
    count = check.outcomes["v:count"]
    assert (count.drifted, count.method, count.statistic, count.threshold) == (
        True, NO_VALUES, 1.0, 1.0)
    assert (count.reference_null_rate, count.current_null_rate) == (0.1, 1.0)
    assert "v:count" not in check.tested and "v__count" not in check.testable
    assert check.drifted == ["v:count"]
    assert check.outcomes["v:amount"].method != NO_VALUES


def test_a_column_missing_from_the_window_counts_as_all_null() -> None:
    check = _check(REFERENCE.drop_columns(["v__channel"]))
    channel = check.outcomes["v:channel"]
    assert (channel.drifted, channel.method, channel.current_null_rate) == (True, NO_VALUES, 1.0)
    assert check.current.column("v__channel").null_count == 200


def test_nan_and_infinity_are_no_usable_value_and_nan_counts_as_missing() -> None:
    values = [math.nan, math.inf, -math.inf, None] * 50
    check = _check(REFERENCE.set_column(0, "v__amount", pa.array(values, pa.float64())))
    amount = check.outcomes["v:amount"]
    assert (amount.drifted, amount.method) == (True, NO_VALUES)
    assert amount.current_null_rate == amount.statistic == 0.5  # NaN and null; infinities not


def test_no_usable_column_at_all_is_a_checked_run_with_every_feature_drifted() -> None:
    window = pa.table({"other": pa.array([1, 2, 3])})
    check = _check(window, drift="{multivariate: {}}")
    assert (check.status, check.drifted, check.dataset_drift) == (
        CHECKED, sorted(NAMES.values()), True)
    assert check.multivariate is None and check.multivariate_drifted is None
    assert check.tested == {} and check.testable == []


def test_a_single_row_window_is_tested_when_min_rows_allows() -> None:
    check = _check(REFERENCE.slice(10, 1))
    assert (check.status, check.current_rows) == (CHECKED, 1)
    assert set(check.tested) == set(NAMES.values())
    for feature, tested in check.tested.items():
        assert tested.current_rows == 1, feature


def test_window_columns_take_the_reference_types() -> None:
    window = REFERENCE.set_column(1, "v__count", pa.array([i % 7 for i in range(200)], pa.int32()))
    check = _check(window)
    assert check.current.schema == REFERENCE.schema
    assert check.outcomes["v:count"].drifted is False


def test_methods_and_thresholds_are_by_column_of_the_tested_features() -> None:
    window = REFERENCE.set_column(2, "v__channel", pa.nulls(200, pa.string()))
    check = _check(window, drift="{methods: {'v:amount': psi, 'v:channel': jensenshannon}, "
                                 "thresholds: {'v:amount': 0.3}}")
    assert check.methods == {"v__amount": "psi"} and check.thresholds == {"v__amount": 0.3}
    assert (check.tested["v:amount"].method, check.tested["v:amount"].threshold) == ("psi", 0.3)


def test_the_multivariate_verdict_is_its_p_value_below_the_threshold() -> None:
    shifted = REFERENCE.set_column(
        0, "v__amount", pa.array([float(i % 50) + 40 for i in range(200)]))
    for window in (REFERENCE, shifted):
        check = _check(window, drift="{multivariate: {permutations: 50, p_value: 0.05}}")
        assert check.multivariate is not None
        assert check.multivariate_drifted == (check.multivariate.p_value < 0.05)
    assert check.multivariate_drifted is True  # the shifted window


_CELL = st.one_of(st.none(), st.just(math.nan), st.just(math.inf),
                  st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amounts=st.lists(_CELL, min_size=1, max_size=60),
       share=st.sampled_from([0.1, 0.34, 0.5, 0.67, 1.0]))
def test_outcomes_follow_their_oracles(amounts: list[float | None], share: float) -> None:
    rows = len(amounts)
    window = pa.table({
        "v__amount": pa.array(amounts, pa.float64()),
        "v__count": pa.array([i % 7 for i in range(rows)], pa.int64()),
        "v__channel": pa.array([("web", "pos", "app")[i % 3] for i in range(rows)]),
    })
    check = _check(window, drift=f"{{drift_share: {share}}}")
    amount = check.outcomes["v:amount"]
    missing = sum(a is None or (isinstance(a, float) and math.isnan(a)) for a in amounts)
    assert amount.current_null_rate == missing / rows
    usable = any(a is not None and math.isfinite(a) for a in amounts)
    assert (amount.method == NO_VALUES) == (not usable)
    if not usable:
        assert amount.drifted and amount.statistic == missing / rows
    drifted = [f for f, o in check.outcomes.items() if o.drifted]
    assert check.drifted == sorted(drifted)
    assert check.dataset_drift == (len(drifted) / len(NAMES) >= share)
    assert set(check.tested) == {f for f, o in check.outcomes.items() if o.method != NO_VALUES}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=30, max_size=200))
def test_a_window_equal_to_its_reference_never_drifts(values: list[float]) -> None:
    reference = pa.table({"v__amount": pa.array(values, pa.float64())})
    names = {"v__amount": "v:amount"}
    check = evaluate_window(_monitor(), names, {"v__amount": PROFILE["v__amount"]}, reference,
                            reference)
    assert check.drifted == [] and check.dataset_drift is False


@pytest.mark.parametrize("rows", [0, 5])
def test_too_few_rows_keeps_the_sizes(rows: int) -> None:
    check = _check(REFERENCE.slice(0, rows), min_rows=10)
    assert (check.reference_rows, check.current_rows, check.drift_share) == (200, rows, 0.5)
