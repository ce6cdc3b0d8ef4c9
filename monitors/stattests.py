"""Drift statistics of one column, reference vs current, as Evidently computes them, but fast.

Each test mirrors one of Evidently 0.7.23's legacy stattests
(`evidently/legacy/calculations/stattests/*.py`), which its `Report([DataDriftPreset()])` runs
through `ValueDrift` -> `get_one_column_drift`: same statistic, same default threshold, same
direction (p-value below the threshold vs distance at or above it). Where Evidently works on
pandas Series row by row, these work on what one sort or one count leaves:

- numeric columns: both samples sorted once (`NumericSample`); K-S and Wasserstein read the two
  sorted arrays, PSI / Jensen-Shannon bin them with `searchsorted`, chi-squared / Z count runs;
- categorical columns: value counts aligned on the union of values (`CategoryCounts`).

Samples arrive cleaned as Evidently cleans them: nulls, NaN and +-inf dropped
(`get_one_column_drift`), so a sample's size is its count of usable values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special

ColumnKind = Literal["numeric", "categorical"]

# scipy.stats.ks_2samp(method="auto") is exact up to this many values per sample (MAX_AUTO_N).
KS_EXACT_MAX_N = 10_000
# evidently/legacy/calculations/stattests/registry.py `_get_default_stattest`: reference size
# above which the large-sample tests apply, and union sizes for the two-value / few-value tests.
SMALL_REFERENCE_ROWS = 1000
TWO_VALUES = 2
FEW_VALUES = 5
# evidently/legacy/calculations/stattests/utils.py `get_binned_data`: numeric columns with more
# distinct reference values than this are binned into a histogram, others counted by value.
HISTOGRAM_ABOVE_DISTINCT = 20
# Breakpoints merged at a time by `wasserstein_normed`. Its scratch arrays (32 KiB each) stay in
# cache and below malloc's mmap threshold, so they are reused, not page-faulted in afresh: at
# 2**14 (128 KiB arrays) the same work took 40x longer, at 2**18 3x.
WASSERSTEIN_SLICE = 1 << 12


@dataclass(frozen=True)
class NumericSample:
    """Finite values of one numeric column, each side sorted ascending, float64."""

    reference: np.ndarray
    current: np.ndarray
    # Both sides have an integer dtype: numpy widens Sturges bins of integers to >= 1.
    integral: bool = False


@dataclass(frozen=True)
class CategoryCounts:
    """Counts of each distinct non-null value, both sides aligned on the union of values in
    ascending value order (the Z-test tells the smallest value from the rest)."""

    reference: np.ndarray
    current: np.ndarray


Sample = NumericSample | CategoryCounts


def distinct_count(sorted_values: np.ndarray) -> int:
    if sorted_values.size == 0:
        return 0
    return 1 + int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1]))


def distinct_union(sample: NumericSample, at_most: int) -> int:
    """Distinct values of both sides together, exact up to `at_most`; more is `at_most + 1`.

    The default test only asks whether there are <= 2 or <= 5, and this spares a sort of the union.
    """
    if max(distinct_count(sample.reference), distinct_count(sample.current)) > at_most:
        return at_most + 1
    union = np.union1d(np.unique(sample.reference), np.unique(sample.current))
    return min(union.size, at_most + 1)


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, their counts) of a sorted array."""
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    return sorted_values[starts], np.diff(np.append(starts, sorted_values.size))


def value_counts(sample: Sample) -> CategoryCounts:
    """Counts per distinct value, as `value_counts()` over the union of both sides' values."""
    if isinstance(sample, CategoryCounts):
        return sample
    ref_values, ref_counts = _runs(sample.reference)
    cur_values, cur_counts = _runs(sample.current)
    union = np.union1d(ref_values, cur_values)
    reference = np.zeros(union.size, np.int64)
    current = np.zeros(union.size, np.int64)
    reference[np.searchsorted(union, ref_values)] = ref_counts
    current[np.searchsorted(union, cur_values)] = cur_counts
    return CategoryCounts(reference, current)


def _sturges_edges(sample: NumericSample) -> np.ndarray:
    """`np.histogram_bin_edges(concat(reference, current), bins="sturges")` from the sorted sides."""
    first = min(sample.reference[0], sample.current[0])
    last = max(sample.reference[-1], sample.current[-1])
    size = sample.reference.size + sample.current.size
    width = (last - first) / (np.log2(size) + 1.0)  # numpy's _hist_bin_sturges
    if sample.integral and width < 1:
        width = 1
    bins = int(np.ceil((last - first) / width))
    return np.linspace(first, last, bins + 1)


def _histogram(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`np.histogram(values, edges)[0]`: bins closed on the left, the last one on both sides."""
    cumulative = np.append(
        np.searchsorted(sorted_values, edges[:-1], "left"),
        np.searchsorted(sorted_values, edges[-1], "right"),
    )
    return np.diff(cumulative)


def binned_counts(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Counts per bin for PSI and Jensen-Shannon, as Evidently's `get_binned_data` bins:
    a Sturges histogram over both sides for numeric columns with more than 20 distinct reference
    values, counts per distinct value otherwise. (Its `n` = 30 bins argument is unused.)"""
    if isinstance(sample, NumericSample) and (
        distinct_count(sample.reference) > HISTOGRAM_ABOVE_DISTINCT
    ):
        edges = _sturges_edges(sample)
        return _histogram(sample.reference, edges), _histogram(sample.current, edges)
    counts = value_counts(sample)
    return counts.reference, counts.current


def _numeric(sample: Sample, method: str) -> NumericSample:
    if not isinstance(sample, NumericSample):
        raise TypeError(f"{method} needs a numeric sample, got {type(sample).__name__}")
    return sample


# ---------------------------------------------------------------------------------------------
# The tests. Each returns Evidently's drift score: a p-value or a distance.
# ---------------------------------------------------------------------------------------------


def _ecdf_gap(sample: NumericSample) -> float:
    """K-S statistic: the largest gap between the two ECDFs, evaluated where scipy evaluates it
    (`ks_2samp`: at every value of either sample, ECDFs closed on the right)."""
    ref, cur = sample.reference, sample.current
    gap = 0.0
    for points in (ref, cur):
        diff = np.searchsorted(ref, points, "right") / ref.size
        diff -= np.searchsorted(cur, points, "right") / cur.size
        gap = max(gap, float(np.max(np.abs(diff))))
    return gap


def _ks_exact_pvalue(n1: int, n2: int, gap: float) -> float:
    """P(D >= gap) under the null for samples of n1 and n2 values, exactly: the share of the
    C(n1 + n2, n1) monotone lattice paths from (0, 0) to (n1, n2) that leave the band
    |i/n1 - j/n2| < gap (Hodges 1958, the method of scipy's `_attempt_exact_2kssamp`).

    Paths are counted row by row: within a row's band the count is the running sum of the row
    below, so each row is one `cumsum`. Rows are rescaled as they go to stay in float range.
    The p-value is 1 - (share inside), so its absolute error is ~1e-12: p-values far below any
    threshold lose relative precision (scipy's recursion keeps it), verdicts do not change.
    """
    if n1 > n2:
        n1, n2 = n2, n1
    g = math.gcd(n1, n2)
    step_i, step_j = n2 // g, n1 // g  # |i/n1 - j/n2| * lcm = |i * step_i - j * step_j|
    h = round(gap * (n1 // g) * n2)  # the gap in lattice units, rounded as scipy rounds it
    if h == 0:
        return 1.0
    row = np.zeros(n2 + 1)
    row[: min(n2, -(-h // step_j) - 1) + 1] = 1.0  # row 0: j * step_j < h
    log_scale = 0.0
    for i in range(1, n1 + 1):
        low = max(0, (i * step_i - h) // step_j + 1)
        high = min(n2, -(-(i * step_i + h) // step_j) - 1)
        if low > high:
            return 1.0
        band = np.cumsum(row[low : high + 1])
        top = band[-1]
        if top == 0:
            return 1.0
        row[low : high + 1] = band / top
        log_scale += math.log(top)
    inside = row[n2]
    if inside == 0:
        return 1.0
    log_all_paths = math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1)
    return min(1.0, max(0.0, -math.expm1(math.log(inside) + log_scale - log_all_paths)))


def ks_pvalue(sample: Sample) -> float:
    """Two-sided two-sample K-S p-value, as `scipy.stats.ks_2samp` (method "auto") gives it,
    which Evidently's `ks_stattest._ks_stat_test` calls."""
    sample = _numeric(sample, "ks")
    n1, n2 = sample.reference.size, sample.current.size
    gap = _ecdf_gap(sample)
    if max(n1, n2) <= KS_EXACT_MAX_N:
        return _ks_exact_pvalue(n1, n2, gap)
    from scipy import stats  # ~45 MiB of RSS to import, for large-sample K-S only

    m, n = max(n1, n2), min(n1, n2)
    return float(np.clip(stats.kstwo.sf(gap, np.round(m * n / (m + n))), 0.0, 1.0))


def wasserstein_normed(sample: Sample) -> float:
    """First Wasserstein distance over the reference's population std, floored at 0.001
    (`wasserstein_distance_norm._wasserstein_distance_norm`).

    Computed as the integral of |Q_ref(t) - Q_cur(t)| over t in (0, 1], which equals scipy's
    integral of |F_ref(x) - F_cur(x)| over x: both quantile functions are steps at the multiples
    of 1/n and 1/m, so in units of 1/(n*m) the breakpoints are the multiples of m and of n, which
    merge without sorting a float. Taken in slices of the unit interval, so the scratch arrays
    stay small whatever the sample sizes.
    """
    sample = _numeric(sample, "wasserstein")
    ref, cur = sample.reference, sample.current
    n, m = ref.size, cur.size
    step = max(1, WASSERSTEIN_SLICE * n // (n + m))  # reference steps per slice
    total = 0.0
    low = 0
    for i in range(step, n + step, step):
        high = min(i, n) * m  # this slice: breakpoints in (low, high]
        breaks = np.concatenate(
            (
                np.arange(low - low % m + m, high + 1, m, dtype=np.int64),
                np.arange(low - low % n + n, high + 1, n, dtype=np.int64),
            )
        )
        breaks.sort(kind="stable")  # two sorted runs: one merge
        widths = np.empty(breaks.size)
        widths[0] = breaks[0] - low
        np.subtract(breaks[1:], breaks[:-1], out=widths[1:])
        breaks -= 1  # the step ending at breakpoint b holds value ceil(b / m) - 1 = (b - 1) // m
        gaps = ref[breaks // m]
        gaps -= cur[breaks // n]
        np.abs(gaps, out=gaps)
        total += float(np.dot(widths, gaps))
        low = high
    return total / (n * m) / max(float(np.std(ref)), 0.001)


def psi(sample: Sample) -> float:
    """Population stability index over `binned_counts` (`psi._psi`): empty bins get a floor
    share first, 1e-4 or a millionth of the smallest non-empty share when that is <= 1e-4."""
    ref_counts, cur_counts = binned_counts(sample)
    ref = _floor_empty(ref_counts / ref_counts.sum())
    cur = _floor_empty(cur_counts / cur_counts.sum())
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def _floor_empty(shares: np.ndarray) -> np.ndarray:
    smallest = shares[shares != 0].min()
    shares[shares == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return shares


def jensenshannon(sample: Sample) -> float:
    """Jensen-Shannon distance (natural log) between the `binned_counts` shares, as
    `scipy.spatial.distance.jensenshannon` computes it (`jensenshannon._jensenshannon`)."""
    ref_counts, cur_counts = binned_counts(sample)
    ref = ref_counts / ref_counts.sum()
    cur = cur_counts / cur_counts.sum()
    mid = (ref + cur) / 2.0
    divergence = np.sum(special.rel_entr(ref, mid)) + np.sum(special.rel_entr(cur, mid))
    return float(np.sqrt(divergence / 2.0))


def chisquare_pvalue(sample: Sample) -> float:
    """Pearson chi-squared p-value of the current counts against the reference counts scaled to
    the current size (`chisquare_stattest._chi_stat_test` -> `scipy.stats.chisquare`). A value
    the reference never had makes the statistic infinite (p = 0); a single value overall has no
    degrees of freedom (p = NaN, never drift), as in scipy."""
    counts = value_counts(sample)
    expected = counts.reference * (counts.current.sum() / counts.reference.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(np.sum((counts.current - expected) ** 2 / expected))
    if counts.current.size == 1:
        return math.nan
    return float(special.chdtrc(counts.current.size - 1, statistic))  # scipy's chi2.sf


def z_pvalue(sample: Sample) -> float:
    """Two-sided two-proportion Z-test p-value of "not the smallest value"
    (`z_stattest._z_stat_test`); 1 when both sides hold one and the same value."""
    counts = value_counts(sample)
    ref, cur = counts.reference, counts.current
    if np.count_nonzero(ref) == np.count_nonzero(cur) == 1 and np.argmax(ref) == np.argmax(cur):
        return 1.0
    n1, n2 = int(ref.sum()), int(cur.sum())
    p1, p2 = (n1 - int(ref[0])) / n1, (n2 - int(cur[0])) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return 2 * (1 - float(special.ndtr(abs(z))))  # Evidently's form, not norm.sf


# ---------------------------------------------------------------------------------------------
# Registry and Evidently's default choice
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftMethod:
    name: str  # Evidently's StatTest.name, the name its per-column options take
    display_name: str  # Evidently's StatTest.display_name, as its reports print it
    kinds: frozenset[str]  # column kinds one may choose it for (StatTest.allowed_feature_types)
    default_threshold: float
    statistic: Callable[[Sample], float]
    drift_if: Callable[[float, float], bool]  # (statistic, threshold) -> drifted

    def drifted(self, statistic: float, threshold: float) -> bool:
        return bool(self.drift_if(statistic, threshold))


NUMERIC = frozenset({"numeric"})
CATEGORICAL = frozenset({"categorical"})
BOTH = NUMERIC | CATEGORICAL

# Thresholds and comparisons as each Evidently stattest module declares them: K-S drifts at
# p <= threshold, chi-squared and Z at p < threshold, the distances at >= threshold.
METHODS: dict[str, DriftMethod] = {
    method.name: method
    for method in (
        DriftMethod("ks", "K-S p_value", NUMERIC, 0.05, ks_pvalue, operator.le),
        DriftMethod(
            "wasserstein", "Wasserstein distance (normed)", NUMERIC, 0.1, wasserstein_normed,
            operator.ge,
        ),
        DriftMethod("psi", "PSI", BOTH, 0.1, psi, operator.ge),
        DriftMethod(
            "jensenshannon", "Jensen-Shannon distance", BOTH, 0.1, jensenshannon, operator.ge
        ),
        DriftMethod(
            "chisquare", "chi-square p_value", CATEGORICAL, 0.05, chisquare_pvalue, operator.lt
        ),
        DriftMethod("z", "Z-test p_value", CATEGORICAL, 0.05, z_pvalue, operator.lt),
    )
}  # fmt: skip


def get_method(name: str, kind: ColumnKind) -> DriftMethod:
    """A method chosen by name for a column of `kind`, refused where Evidently refuses it."""
    method = METHODS.get(name)
    if method is None:
        raise ValueError(f"unknown drift method {name!r}; known: {', '.join(METHODS)}")
    if kind not in method.kinds:
        raise ValueError(
            f"drift method {name!r} does not apply to {kind} columns (only to "
            f"{' and '.join(sorted(method.kinds))})"
        )
    return method


def default_method(kind: ColumnKind, n_rows: int, n_unique: int) -> DriftMethod:
    """Evidently's default test (`registry._get_default_stattest`).

    n_rows: usable reference values; n_unique: distinct usable values of both sides together
    (only <= 2 and <= 5 matter, so it may be capped at 6).

    | kind        | reference <= 1000 rows               | > 1000 rows                       |
    |-------------|--------------------------------------|-----------------------------------|
    | numeric     | <= 2 values Z, <= 5 chi-squared, K-S | <= 5 values Jensen-Shannon, else   |
    |             |                                      | Wasserstein (normed)              |
    | categorical | <= 2 values Z, else chi-squared      | Jensen-Shannon                    |

    The Z and chi-squared tests are picked for small numeric columns too, although one could not
    choose them by name for those.
    """
    if kind not in BOTH:
        raise ValueError(f"no drift test for column kind {kind!r}")
    if n_rows <= SMALL_REFERENCE_ROWS:
        if kind == "numeric" and n_unique > FEW_VALUES:
            return METHODS["ks"]
        return METHODS["chisquare"] if n_unique > TWO_VALUES else METHODS["z"]
    if kind == "numeric" and n_unique > FEW_VALUES:
        return METHODS["wasserstein"]
    return METHODS["jensenshannon"]
