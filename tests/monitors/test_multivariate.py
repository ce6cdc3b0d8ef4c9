"""The MMD permutation test: its encoding and statistic against naive oracles, what it detects
that per-feature tests cannot, its false-alarm rate, determinism and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import pytest

from monitors.drift import check_drift
from monitors.multivariate import (
    TOP_CATEGORIES,
    MultivariateError,
    encode,
    mmd_test,
)


def _normal_table(rng: np.random.Generator, rows: int, columns: int) -> pa.Table:
    return pa.table({f"x{i}": rng.normal(0.0, 1.0, rows) for i in range(columns)})


# -- the joint vector against a row-by-row oracle ------------------------------------------------


def _oracle_encode(reference: list[dict], current: list[dict], numbers, strings):
    """The documented encoding, one value at a time in plain Python."""

    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and not math.isfinite(value))

    columns: list[tuple[str, list[float], list[float]]] = []
    for name in numbers:
        known = [float(r[name]) for r in reference if not missing(r[name])]
        mean = sum(known) / len(known)
        std = math.sqrt(sum((v - mean) ** 2 for v in known) / len(known))
        any_missing = any(missing(r[name]) for r in reference + current)
        if std > 0:
            median = float(np.median(known))
            columns.append(
                (
                    name,
                    *[
                        [
                            ((median if missing(r[name]) else float(r[name])) - mean) / std
                            for r in side
                        ]
                        for side in (reference, current)
                    ],
                )
            )
        if any_missing:
            columns.append(
                (
                    f"{name}:missing",
                    *[
                        [1.0 if missing(r[name]) else 0.0 for r in side]
                        for side in (reference, current)
                    ],
                )
            )
    for name in strings:
        counts: dict[str, int] = {}
        for row in reference:
            if row[name] is not None:
                counts[row[name]] = counts.get(row[name], 0) + 1
        top = sorted(counts, key=lambda v: (-counts[v], v))[:TOP_CATEGORIES]
        for value in top:
            columns.append(
                (
                    f"{name}={value}",
                    *[
                        [1.0 if r[name] == value else 0.0 for r in side]
                        for side in (reference, current)
                    ],
                )
            )
        columns.append(
            (
                f"{name}=<other>",
                *[
                    [1.0 if r[name] is not None and r[name] not in top else 0.0 for r in side]
                    for side in (reference, current)
                ],
            )
        )
        if any(r[name] is None for r in reference + current):
            columns.append(
                (
                    f"{name}:missing",
                    *[
                        [1.0 if r[name] is None else 0.0 for r in side]
                        for side in (reference, current)
                    ],
                )
            )
    return columns


def test_encoding_matches_a_row_oracle() -> None:
    rng = np.random.default_rng(3)

    def side(rows: int, shift: float) -> pa.Table:
        amount = rng.lognormal(3.0 + shift, 1.0, rows)
        amount[rng.random(rows) < 0.1] = np.nan
        amount[:2] = [np.inf, -np.inf]  # not usable numbers: missing
        count = rng.integers(0, 30, rows)
        many = [f"m{v}" for v in rng.integers(0, 40, rows)]  # more than TOP_CATEGORIES values
        return pa.table(
            {
                "amount": amount,
                "count": pa.array(count, mask=rng.random(rows) < 0.05),
                "constant": np.full(rows, 7.0),
                "flag": rng.random(rows) < 0.3,
                "country": pa.array(
                    rng.choice(["DE", "FR", "NL"], rows).tolist(), mask=rng.random(rows) < 0.1
                ),
                "merchant": many,
            }
        )

    reference, current = side(300, 0.0), side(200, 0.5)
    current = current.set_column(
        4, "country", pa.array(["XX"] * 20 + current.column("country").to_pylist()[20:])
    )
    x, y, names = encode(reference, current)
    expected = _oracle_encode(
        reference.to_pylist(),
        current.to_pylist(),
        ["amount", "count", "constant", "flag"],
        ["country", "merchant"],
    )
    assert names == [c[0] for c in expected]
    assert "constant" not in names and "flag:missing" not in names
    assert sum(n.startswith("merchant=") for n in names) == TOP_CATEGORIES + 1
    np.testing.assert_allclose(x, np.array([c[1] for c in expected]).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, np.array([c[2] for c in expected]).T, rtol=1e-12, atol=1e-12)


def test_statistic_matches_a_naive_unbiased_mmd() -> None:
    rng = np.random.default_rng(4)
    reference = _normal_table(rng, 120, 3)
    current = pa.table({f"x{i}": rng.normal(0.4 * i, 1.0 + 0.2 * i, 90) for i in range(3)})
    result = mmd_test(reference, current, permutations=20, max_rows=1_000)

    x, y, _ = encode(reference, current)
    pooled = np.vstack([x, y])
    distances = np.sqrt(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1))
    sigma = np.median(distances[np.triu_indices(len(pooled), 1)])
    kernel = np.exp(-(distances**2) / (2 * sigma**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    naive = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    assert result.statistic == pytest.approx(naive, rel=1e-4, abs=1e-6)
    assert (result.reference_rows, result.current_rows) == (120, 90)
    assert result.p_value == pytest.approx(1 / 21)  # no relabelling comes near the real one


# -- what it detects -----------------------------------------------------------------------------


def test_correlation_only_shift_is_detected_where_per_feature_tests_see_nothing() -> None:
    rng = np.random.default_rng(5)
    rows, columns = 1_500, 6
    reference = _normal_table(rng, rows, columns)
    # The current window holds exactly the reference's values of each column (so every marginal
    # is the same), reordered so that x0 and x1 move together (a Gaussian copula, rho 0.8).
    covariance = np.eye(columns)
    covariance[0, 1] = covariance[1, 0] = 0.8
    latent = rng.multivariate_normal(np.zeros(columns), covariance, rows)
    current = pa.table(
        {
            name: np.sort(reference.column(name).to_numpy())[np.argsort(np.argsort(latent[:, i]))]
            for i, name in enumerate(reference.column_names)
        }
    )
    assert np.corrcoef(current["x0"], current["x1"])[0, 1] > 0.7

    per_feature = check_drift(reference, current)
    assert per_feature.drifted_columns == 0
    # Identical values on both sides: the normed Wasserstein distance of every column is 0.
    assert {c.method for c in per_feature.columns} == {"wasserstein"}
    assert all(c.statistic == pytest.approx(0.0, abs=1e-12) for c in per_feature.columns)

    result = mmd_test(reference, current, permutations=200, max_rows=2_000)
    assert result.p_value < 0.01
    same = mmd_test(
        reference, reference.take(rng.permutation(rows)), permutations=200, max_rows=2_000
    )
    assert same.p_value > 0.05


@pytest.mark.parametrize("shift", ["null burst", "new category"])
def test_generator_shifts_are_detected(shift: str) -> None:
    rng = np.random.default_rng(6)

    def window(rows: int, broken: bool) -> pa.Table:
        amount = rng.lognormal(3.0, 1.0, rows)
        mask = rng.random(rows) < (0.3 if broken and shift == "null burst" else 0.01)
        tiers = rng.choice(["standard", "gold", "platinum"], rows, p=[0.6, 0.3, 0.1])
        if broken and shift == "new category":
            tiers[rng.random(rows) < 0.2] = "basic"
        return pa.table({"amount": pa.array(amount, mask=mask), "tier": tiers.tolist()})

    reference = window(1_000, False)
    assert mmd_test(reference, window(800, True), permutations=100, max_rows=2_000).p_value < 0.01
    assert mmd_test(reference, window(800, False), permutations=100, max_rows=2_000).p_value > 0.05


# -- calibration, determinism, speed -------------------------------------------------------------


def _same_distribution_window(rng: np.random.Generator, rows: int) -> pa.Table:
    base = rng.normal(0.0, 1.0, rows)
    return pa.table(
        {
            "a": base,
            "b": 0.5 * base + rng.normal(0.0, 1.0, rows),  # correlated, on both sides alike
            "c": pa.array(rng.poisson(3, rows), mask=rng.random(rows) < 0.05),
            "d": rng.choice(["x", "y", "z"], rows, p=[0.5, 0.3, 0.2]).tolist(),
        }
    )


def _null_p_values(windows: int, rows: tuple[int, int], permutations: int) -> np.ndarray:
    p_values = []
    for seed in range(windows):
        rng = np.random.default_rng(1_000 + seed)
        reference = _same_distribution_window(rng, rows[0])
        current = _same_distribution_window(rng, rows[1])
        result = mmd_test(reference, current, permutations=permutations, max_rows=2_000, seed=seed)
        p_values.append(result.p_value)
    return np.array(p_values)


def test_false_alarm_rate_over_50_windows_at_the_monitors_threshold() -> None:
    """50 windows drawn from the reference's distribution, checked as a monitor checks them
    (200 permutations): at most 5% alarm, at the monitor's default p 0.01 and at p 0.05.

    At p 0.05 this bound is tight for any exact test (its level with 200 permutations is 4.5%,
    so 3+ alarms in 50 windows happen 40% of the time); the calibration test below is the
    robust check of the p-values, this one the issue's acceptance criterion on fixed seeds."""
    p_values = _null_p_values(50, (300, 200), 200)
    assert np.mean(p_values < 0.01) <= 0.05
    assert np.mean(p_values < 0.05) <= 0.05


def test_p_values_are_calibrated_at_0_05() -> None:
    """Same-distribution windows alarm at p < 0.05 as often as an exact permutation test should:
    with 99 permutations that is P(p < 0.05) = 4/100. Over 400 windows the count stays inside
    the binomial 0.1%..99.9% band of that level (a test too eager or too timid leaves it).

    (A fixed 50-window bound of 5% at p 0.05 would be a coin toss for any exact test: 50
    windows at 4.5% exceed 2 alarms 40% of the time.)"""
    from scipy import stats

    windows, level = 400, 4 / 100
    alarms = int(np.sum(_null_p_values(windows, (100, 80), 99) < 0.05))
    low, high = stats.binom.ppf([0.001, 0.999], windows, level)
    assert low <= alarms <= high, (alarms, low, high)


def test_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(7)
    reference, current = _normal_table(rng, 3_000, 5), _normal_table(rng, 3_000, 5)
    first = mmd_test(reference, current, permutations=50, max_rows=500, seed=11)
    again = mmd_test(reference, current, permutations=50, max_rows=500, seed=11)
    other = mmd_test(reference, current, permutations=50, max_rows=500, seed=12)
    assert first == again
    assert (first.reference_rows, first.current_rows) == (500, 500)
    assert other.statistic != first.statistic  # another seed draws other rows


def test_2000_rows_per_side_20_columns_200_permutations_take_under_2_seconds() -> None:
    rng = np.random.default_rng(8)
    reference, current = _normal_table(rng, 5_000, 20), _normal_table(rng, 5_000, 20)
    timings = []
    # CPU seconds of this process, not the wall clock: the test runs single-threaded numpy, so
    # on a quiet machine they are the same, and other processes on a loaded one cannot add to
    # them. The better of two: the first pays for warming caches.
    for _ in range(2):
        began = time.process_time()
        result = mmd_test(reference, current, permutations=200, max_rows=2_000)
        timings.append(time.process_time() - began)
    assert result.reference_rows == result.current_rows == 2_000
    assert min(timings) < 2.0, timings


# -- what it refuses -----------------------------------------------------------------------------


def test_errors_name_the_problem() -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "x"]})
    with pytest.raises(MultivariateError, match=r"\['b'\] are not in the current data"):
        mmd_test(table, table.select(["a"]), permutations=20, max_rows=100)
    with pytest.raises(MultivariateError, match="column 'b' holds string values in the reference"):
        mmd_test(
            table, table.set_column(1, "b", pa.array([1, 2, 3])), permutations=20, max_rows=100
        )
    with pytest.raises(MultivariateError, match="current data has 1 row"):
        mmd_test(table, table.slice(0, 1), permutations=20, max_rows=100)


def test_nothing_varies_gives_no_drift() -> None:
    table = pa.table({"a": [1.0] * 10})
    result = mmd_test(table, pa.table({"a": [1.0] * 8}), permutations=20, max_rows=100)
    assert (result.statistic, result.p_value) == (0.0, 1.0)
