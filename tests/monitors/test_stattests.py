"""Drift statistics against naive oracles, and the registry against Evidently's own."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests import registry as evidently_registry
from evidently.legacy.core import ColumnType
from scipy import stats
from scipy.spatial import distance

from monitors import stattests
from monitors.stattests import METHODS, CategoryCounts, NumericSample

EVIDENTLY_TYPE = {"numeric": ColumnType.Numerical, "categorical": ColumnType.Categorical}


def numeric(reference, current) -> NumericSample:
    ref, cur = np.asarray(reference), np.asarray(current)
    integral = ref.dtype.kind in "iu" and cur.dtype.kind in "iu"
    return NumericSample(np.sort(ref.astype(float)), np.sort(cur.astype(float)), integral)


def categories(reference: list, current: list) -> CategoryCounts:
    """Counts aligned on the sorted union of values, counted one value at a time."""
    ref, cur = Counter(reference), Counter(current)
    keys = sorted(set(ref) | set(cur))
    return CategoryCounts(
        np.array([ref[key] for key in keys]), np.array([cur[key] for key in keys])
    )


# ---------------------------------------------------------------------------------------------
# Naive oracles: each statistic straight from its definition, value by value
# ---------------------------------------------------------------------------------------------


def naive_shares(reference, current, numeric_column: bool) -> tuple[list[float], list[float]]:
    """Evidently's binning: a Sturges histogram over both sides when the reference has more
    than 20 distinct values of a numeric column, else one bin per distinct value."""
    if numeric_column and len(set(reference)) > 20:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        bins = len(edges) - 1

        def shares(values):
            counts = [0] * bins
            for value in values:
                # [edge, next edge), the last bin closed on both sides
                counts[min(int(np.searchsorted(edges, value, "right")) - 1, bins - 1)] += 1
            return [count / len(values) for count in counts]

        return shares(reference), shares(current)
    keys = set(reference) | set(current)
    return (
        [sum(v == key for v in reference) / len(reference) for key in keys],
        [sum(v == key for v in current) / len(current) for key in keys],
    )


def naive_psi(reference, current, numeric_column: bool) -> float:
    ref, cur = naive_shares(reference, current, numeric_column)

    def floored(shares):
        smallest = min(s for s in shares if s > 0)
        floor = smallest / 1e6 if smallest <= 0.0001 else 0.0001
        return [s if s > 0 else floor for s in shares]

    total = 0.0
    for r, c in zip(floored(ref), floored(cur)):
        total += (r - c) * math.log(r / c)
    return total


def naive_z(reference, current) -> float:
    smallest = min(set(reference) | set(current))
    if len(set(reference)) == 1 and set(reference) == set(current):
        return 1.0
    n1, n2 = len(reference), len(current)
    p1 = sum(v != smallest for v in reference) / n1
    p2 = sum(v != smallest for v in current) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 2 * (1 - stats.norm.cdf(abs(z)))


def naive_chisquare(reference, current) -> float:
    keys = sorted(set(reference) | set(current))
    expected = [sum(v == k for v in reference) * len(current) / len(reference) for k in keys]
    observed = [sum(v == k for v in current) for k in keys]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(observed, expected).pvalue)


# ---------------------------------------------------------------------------------------------
# Numeric tests
# ---------------------------------------------------------------------------------------------

KS_CASES = [
    # (reference size, current size, shift, integer values): exact and asymptotic regimes,
    # equal and unequal sizes, ties, p-values on both sides of 0.05
    (40, 40, 0.0, False),
    (37, 90, 0.5, False),
    (300, 211, 0.15, False),
    (500, 500, 0.1, True),
    (1000, 7, 1.0, False),
    (2500, 9999, 0.05, False),
    (12_000, 15_000, 0.03, False),
    (20_000, 800, 0.1, True),
]


@pytest.mark.parametrize(("n1", "n2", "shift", "integers"), KS_CASES)
def test_ks_pvalue_matches_scipy_ks_2samp(n1: int, n2: int, shift: float, integers: bool) -> None:
    rng = np.random.default_rng([n1, n2])
    ref, cur = rng.normal(0, 3, n1), rng.normal(3 * shift, 3, n2)
    if integers:
        ref, cur = ref.round().astype(np.int64), cur.round().astype(np.int64)
    expected = stats.ks_2samp(ref, cur).pvalue
    assert stattests.ks_pvalue(numeric(ref, cur)) == pytest.approx(expected, rel=1e-8, abs=1e-13)


def test_ks_exact_pvalue_covers_the_threshold_region() -> None:
    """Many small samples: the exact p-values must agree with scipy where verdicts flip."""
    rng = np.random.default_rng(7)
    near = 0
    for _ in range(60):
        n1, n2 = rng.integers(5, 400, size=2)
        ref, cur = rng.normal(0, 1, n1), rng.normal(rng.uniform(0, 0.6), 1, n2)
        expected = stats.ks_2samp(ref, cur).pvalue
        near += 0.01 < expected < 0.2
        assert stattests.ks_pvalue(numeric(ref, cur)) == pytest.approx(expected, rel=1e-8)
    assert near >= 5


@pytest.mark.parametrize(
    ("n1", "n2", "kind"),
    [(5, 7, "normal"), (100, 37, "ties"), (999, 1234, "normal"), (3000, 3000, "ties"),
     (20_000, 30_001, "normal"), (500, 800, "constant")],
)  # fmt: skip
def test_wasserstein_normed_matches_scipy(
    n1: int, n2: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng([n1, n2, 1])
    ref, cur = rng.normal(0, 2, n1), rng.normal(0.4, 2.5, n2)
    if kind == "ties":
        ref, cur = ref.round(), cur.round()
    if kind == "constant":  # std 0: Evidently's norm floors at 0.001
        ref = np.full(n1, 1.5)
    expected = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
    assert stattests.wasserstein_normed(numeric(ref, cur)) == pytest.approx(expected, rel=1e-9)
    # In slices of a few breakpoints, the merge across slice boundaries must give the same.
    monkeypatch.setattr(stattests, "WASSERSTEIN_SLICE", 7)
    assert stattests.wasserstein_normed(numeric(ref, cur)) == pytest.approx(expected, rel=1e-9)


PSI_JS_CASES = [
    # (reference, current) generators: Sturges histograms (> 20 distinct reference values),
    # histograms of integers (numpy widens their bins), per-value bins, a value the reference
    # lacks (PSI's floor for empty bins), and a current side with far more values.
    ("normal", lambda r: (r.normal(0, 1, 3000), r.normal(0.2, 1.1, 2000))),
    ("integers", lambda r: (r.integers(0, 25, 4000), r.integers(2, 26, 3000))),
    ("few values", lambda r: (r.integers(0, 4, 2000).astype(float), r.integers(0, 5, 1500).astype(float))),
    ("rare value", lambda r: (r.integers(0, 4, 900).astype(float), np.append(r.integers(0, 3, 50_000), 9.0))),
    ("20 distinct", lambda r: (r.integers(0, 20, 3000), r.integers(0, 22, 2000))),
    ("21 distinct", lambda r: (r.integers(0, 21, 3000), r.integers(0, 22, 2000))),
    ("small reference", lambda r: (r.integers(0, 15, 2000).astype(float), r.normal(5, 3, 800))),
]  # fmt: skip


@pytest.mark.parametrize(("label", "make"), PSI_JS_CASES, ids=[c[0] for c in PSI_JS_CASES])
def test_psi_and_jensenshannon_of_numeric_columns_match_naive_binning(label, make) -> None:
    ref, cur = make(np.random.default_rng(len(label)))
    sample = numeric(ref, cur)
    assert stattests.psi(sample) == pytest.approx(naive_psi(ref, cur, True), rel=1e-9)
    ref_shares, cur_shares = naive_shares(ref, cur, True)
    expected = distance.jensenshannon(ref_shares, cur_shares)
    assert stattests.jensenshannon(sample) == pytest.approx(expected, rel=1e-9)


def test_histogram_bins_of_integers_are_at_least_one_wide() -> None:
    """21 distinct integers over 2**20 rows: Sturges asks for bins narrower than 1, which numpy
    widens to 1 for integer data (and so for Evidently's int64 columns)."""
    rng = np.random.default_rng(5)
    ref, cur = rng.integers(0, 21, 1 << 19), rng.integers(0, 21, 1 << 19)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    assert len(edges) - 1 == 20  # would be 22 for the same values as floats
    ref_counts, cur_counts = stattests.binned_counts(numeric(ref, cur))
    assert ref_counts.tolist() == np.histogram(ref, edges)[0].tolist()
    assert cur_counts.tolist() == np.histogram(cur, edges)[0].tolist()


def test_psi_and_jensenshannon_of_categories_match_naive_counts() -> None:
    rng = np.random.default_rng(3)
    ref = list(rng.choice(["a", "b", "c", "d"], 5000, p=[0.5, 0.3, 0.15, 0.05]))
    cur = list(rng.choice(["a", "b", "c", "e"], 4000, p=[0.4, 0.3, 0.2, 0.1]))
    sample = categories(ref, cur)
    assert stattests.psi(sample) == pytest.approx(naive_psi(ref, cur, False), rel=1e-9)
    expected = distance.jensenshannon(*naive_shares(ref, cur, False))
    assert stattests.jensenshannon(sample) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        (["a"] * 30 + ["b"] * 20, ["a"] * 25 + ["b"] * 30),
        (["x"] * 40 + ["y"] * 35 + ["z"] * 25, ["x"] * 20 + ["y"] * 30 + ["z"] * 50),
        (["x"] * 40 + ["y"] * 60, ["x"] * 50 + ["y"] * 45 + ["new"] * 5),  # p = 0
        (["only"] * 10, ["only"] * 12),  # no degrees of freedom: NaN
    ],
)
def test_chisquare_pvalue_matches_scipy_on_naive_counts(reference, current) -> None:
    got = stattests.chisquare_pvalue(categories(reference, current))
    expected = naive_chisquare(reference, current)
    assert got == pytest.approx(expected, rel=1e-12, nan_ok=True)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ([0] * 60 + [1] * 40, [0] * 45 + [1] * 55),
        ([False] * 10 + [True] * 90, [False] * 12 + [True] * 88),
        (["a"] * 10, ["a"] * 7),  # one and the same value: 1
        (["a"] * 10, ["b"] * 7),
        ([1, 2, 3] * 20, [1] * 30 + [3] * 20),  # "not the smallest value" over 3 values
    ],
)
def test_z_pvalue_matches_naive_formula(reference, current) -> None:
    got = stattests.z_pvalue(categories(reference, current))
    assert got == pytest.approx(naive_z(reference, current), rel=1e-12)


def test_categorical_tests_on_numeric_samples_count_values() -> None:
    """Chi-squared and Z run on small numeric columns too (Evidently's default picks them)."""
    ref, cur = [1.0, 2.0, 2.0, 5.0] * 50, [1.0, 2.0, 5.0, 5.0] * 40
    sample = numeric(ref, cur)
    assert stattests.chisquare_pvalue(sample) == pytest.approx(naive_chisquare(ref, cur))
    assert stattests.z_pvalue(sample) == pytest.approx(naive_z(ref, cur))


# ---------------------------------------------------------------------------------------------
# Against Evidently itself: statistics, registry, default choice
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_statistic_equals_evidentlys_own_stattest(name: str) -> None:
    rng = np.random.default_rng(11)
    method = METHODS[name]
    kind = "numeric" if "numeric" in method.kinds else "categorical"
    if kind == "numeric":
        ref, cur = rng.normal(0, 1, 700), rng.normal(0.12, 1.1, 650)
        sample = numeric(ref, cur)
    else:
        values = ["a", "b"] if name == "z" else ["a", "b", "c"]
        ref, cur = rng.choice(values, 700), rng.choice(values, 650)
        cur[:40] = values[0]
        sample = categories(list(ref), list(cur))
    evidently_test = evidently_registry.get_registered_stattest(name, EVIDENTLY_TYPE[kind])
    result = evidently_test(pd.Series(ref), pd.Series(cur), EVIDENTLY_TYPE[kind], None)
    statistic = method.statistic(sample)
    assert statistic == pytest.approx(result.drift_score, rel=1e-9)
    assert method.drifted(statistic, method.default_threshold) == result.drifted


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_mirrors_evidentlys(name: str) -> None:
    method = METHODS[name]
    for kind, column_type in EVIDENTLY_TYPE.items():
        if kind in method.kinds:
            theirs = evidently_registry.get_registered_stattest(name, column_type)
            assert (method.display_name, method.default_threshold) == (
                theirs.display_name,
                theirs.default_threshold,
            )
        else:
            with pytest.raises(ValueError, match="isn't applicable"):
                evidently_registry.get_registered_stattest(name, column_type)
            with pytest.raises(ValueError, match="does not apply to"):
                stattests.get_method(name, kind)


def test_unknown_method_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown drift method 'kl_div'; known: ks, wasserstein"):
        stattests.get_method("kl_div", "numeric")


@pytest.mark.parametrize(
    ("name", "at_threshold_drifts"),
    [("ks", True), ("chisquare", False), ("z", False), ("wasserstein", True),
     ("psi", True), ("jensenshannon", True)],
)  # fmt: skip
def test_verdict_at_exactly_the_threshold(name: str, at_threshold_drifts: bool) -> None:
    method = METHODS[name]
    threshold = method.default_threshold
    assert method.drifted(threshold, threshold) is at_threshold_drifts
    p_value = name in ("ks", "chisquare", "z")
    assert method.drifted(threshold / 2 if p_value else threshold * 2, threshold)
    assert not method.drifted(threshold * 2 if p_value else threshold / 2, threshold)


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
@pytest.mark.parametrize("n_rows", [999, 1000, 1001])
@pytest.mark.parametrize("n_unique", [1, 2, 3, 5, 6, 40])
def test_default_method_at_the_size_boundaries(kind: str, n_rows: int, n_unique: int) -> None:
    values = np.arange(n_rows) % n_unique
    reference = pd.Series(values if kind == "numeric" else values.astype(str))
    current = reference.iloc[: max(n_unique, 10)]
    theirs = evidently_registry._get_default_stattest(reference, current, EVIDENTLY_TYPE[kind])
    assert stattests.default_method(kind, n_rows, n_unique).name == theirs.name


def test_distinct_union_is_exact_up_to_the_cap() -> None:
    sample = numeric([1.0, 1.0, 2.0], [2.0, 3.0, 3.0])
    assert stattests.distinct_union(sample, at_most=5) == 3
    assert stattests.distinct_union(sample, at_most=2) == 3
    five = numeric([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 1.0])
    assert stattests.distinct_union(five, at_most=5) == 5
    wide = numeric(np.arange(100.0), [0.0])
    assert stattests.distinct_union(wide, at_most=5) == 6
