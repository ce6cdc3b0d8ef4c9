"""Multivariate drift: an MMD permutation test on the joint feature vector (torch, CPU).

Per-feature tests compare marginals; a change in how features move together (a correlation
flipping, a segment's mix changing with the same totals) leaves every marginal as it was. The
maximum mean discrepancy compares the whole distributions: with a Gaussian kernel k,

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)

(unbiased: pairs of a row with itself left out), which is 0 only when the distributions agree.

The joint vector (`encode`), fixed by the reference sample:
- numbers (and booleans as 0/1): missing values (null, NaN, +-inf) imputed with the reference
  median, then standardized by the reference mean and std; a column constant in the reference
  is dropped (its marginal change is the per-feature tests' to see);
- categories: one-hot over the reference's TOP_CATEGORIES most frequent values, plus "other";
- a 0/1 "missing" column for every column with a missing value on either side.

Bandwidth: the median distance between pooled rows (on a seeded subset of BANDWIDTH_ROWS).
P-value: the pooled rows relabelled `permutations` times at random,
(1 + #{permuted MMD^2 >= observed}) / (1 + permutations). The kernel matrix is computed once;
every labelling is then one column of a 0/1 matrix A, and K @ A gives all of their sums in one
matrix product.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from featurestore.errors import FeatureStoreError
from monitors.columns import sample_rows

TOP_CATEGORIES = 20
BANDWIDTH_ROWS = 1_000
TORCH_THREADS = 2  # at most; the monitor worker shares the machine with the API and Spark

_threads_lock = threading.Lock()


class MultivariateError(FeatureStoreError):
    """The test cannot run on the data as given; the message names the column or option."""


@dataclass(frozen=True)
class MultivariateResult:
    statistic: float  # unbiased MMD^2 of the samples tested
    p_value: float
    reference_rows: int  # rows of each side tested
    current_rows: int


# ---------------------------------------------------------------------------------------------
# The joint vector


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _is_category(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_dictionary(kind)
    )


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """float64 values, every missing value (null, NaN, +-inf) as NaN."""
    values = pc.cast(column, pa.float64(), safe=False).to_numpy()  # nulls -> NaN
    return np.where(np.isfinite(values), values, np.nan)


def _number_parts(
    name: str, ref: pa.ChunkedArray, cur: pa.ChunkedArray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    x, y = _floats(ref), _floats(cur)
    x_missing, y_missing = np.isnan(x), np.isnan(y)
    parts = []
    known = x[~x_missing]
    if known.size:
        mean, std = known.mean(), known.std()
        if std > 0 and np.isfinite(std):
            median = np.median(known)
            x, y = np.where(x_missing, median, x), np.where(y_missing, median, y)
            parts.append((name, (x - mean) / std, (y - mean) / std))
    if x_missing.any() or y_missing.any():
        parts.append(
            (f"{name}:missing", x_missing.astype(np.float64), y_missing.astype(np.float64))
        )
    return parts


def _category_parts(
    name: str, ref: pa.ChunkedArray, cur: pa.ChunkedArray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if pa.types.is_dictionary(ref.type):
        ref = ref.cast(ref.type.value_type)
    if pa.types.is_dictionary(cur.type):
        cur = cur.cast(cur.type.value_type)
    if cur.type != ref.type:
        cur = cur.cast(ref.type)
    counted = pc.value_counts(ref.drop_null())
    values, counts = counted.field("values").to_pylist(), counted.field("counts").to_numpy()
    order = sorted(range(len(values)), key=lambda i: (-counts[i], values[i]))
    top = [values[i] for i in order[:TOP_CATEGORIES]]
    value_set = pa.array(top, ref.type)
    parts = []
    slots = []
    for column in (ref, cur):
        slot = pc.fill_null(pc.index_in(column, value_set=value_set), -1).to_numpy()
        slots.append((slot, column.is_null().to_numpy()))
    (x_slot, x_null), (y_slot, y_null) = slots
    for index, value in enumerate(top):
        parts.append((f"{name}={value}", (x_slot == index) * 1.0, (y_slot == index) * 1.0))
    parts.append(
        (f"{name}=<other>", ((x_slot < 0) & ~x_null) * 1.0, ((y_slot < 0) & ~y_null) * 1.0)
    )
    if x_null.any() or y_null.any():
        parts.append((f"{name}:missing", x_null * 1.0, y_null * 1.0))
    return parts


def encode(reference: pa.Table, current: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The joint vectors of both sides (float64, rows x encoded columns) and the encoded
    columns' names, by the reference's statistics; every column of `reference` is encoded."""
    missing = [c for c in reference.column_names if c not in current.column_names]
    if missing:
        raise MultivariateError(f"columns {missing} are not in the current data")
    parts = []
    for name in reference.column_names:
        ref, cur = reference.column(name), current.column(name)
        if _is_number(ref.type) and _is_number(cur.type):
            parts += _number_parts(name, ref, cur)
        elif _is_category(ref.type) and _is_category(cur.type):
            parts += _category_parts(name, ref, cur)
        else:
            raise MultivariateError(
                f"column {name!r} holds {ref.type} values in the reference data and "
                f"{cur.type} in the current data; the joint vector takes numbers and strings"
            )
    names = [p[0] for p in parts]
    x = np.column_stack([p[1] for p in parts]) if parts else np.empty((reference.num_rows, 0))
    y = np.column_stack([p[2] for p in parts]) if parts else np.empty((current.num_rows, 0))
    return x, y, names


# ---------------------------------------------------------------------------------------------
# The test


@contextmanager
def _torch_threads(limit: int) -> Iterator[None]:
    with _threads_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, min(before, limit)))
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return squared.clamp_(min=0.0)


def _bandwidth(pooled: torch.Tensor, rng: np.random.Generator) -> float:
    """Median distance between distinct pairs of (a seeded subset of) the pooled rows."""
    rows = pooled.shape[0]
    if rows > BANDWIDTH_ROWS:
        pooled = pooled[torch.from_numpy(rng.choice(rows, BANDWIDTH_ROWS, replace=False))]
    upper = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1)
    distances = _squared_distances(pooled, pooled)[upper[0], upper[1]].sqrt()
    median = float(distances.median()) if distances.numel() else 0.0
    if median > 0:
        return median
    # Most pairs coincide (few distinct rows): the mean distance still separates the rest.
    return float(distances.mean()) if distances.numel() else 0.0


def _mmd_sums(kernel: torch.Tensor, labels: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Unbiased MMD^2 of every labelling (a column of `labels`, 1 = first sample); the kernel's
    diagonal is zero, so a row's pair with itself is left out."""
    ka = kernel @ labels
    within_x = (labels * ka).sum(0).double()  # a'Ka
    row_sums = kernel.sum(1)
    with_all = (labels.T @ row_sums).double()  # a'K1
    total = row_sums.double().sum()
    between = with_all - within_x
    within_y = total - 2.0 * with_all + within_x
    return within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * between / (n * m)


def mmd_test(
    reference: pa.Table,
    current: pa.Table,
    *,
    permutations: int,
    max_rows: int,
    seed: int = 0,
) -> MultivariateResult:
    """MMD^2 of `current` against `reference` on the joint vector of the reference's columns,
    with its permutation p-value; each side subsampled to at most `max_rows` rows (seeded)."""
    if permutations < 1:
        raise MultivariateError(f"permutations must be at least 1, got {permutations}")
    if max_rows < 2:
        raise MultivariateError(f"max_rows must be at least 2, got {max_rows}")
    for side, table in (("reference", reference), ("current", current)):
        if table.num_rows < 2:
            raise MultivariateError(
                f"the {side} data has {table.num_rows} row(s); the test needs at least 2"
            )
    missing = [c for c in reference.column_names if c not in current.column_names]
    if missing:
        raise MultivariateError(f"columns {missing} are not in the current data")
    rng = np.random.default_rng(seed)
    reference = sample_rows(reference, max_rows, rng)
    current = sample_rows(current.select(reference.column_names), max_rows, rng)
    n, m = reference.num_rows, current.num_rows
    x, y, _ = encode(reference, current)
    if x.shape[1] == 0:  # nothing varies in the reference: nothing to compare
        return MultivariateResult(0.0, 1.0, n, m)

    total = n + m
    labels = np.zeros((total, permutations + 1), np.float32)
    labels[:n, 0] = 1.0  # the observed labelling
    keys = rng.random((permutations, total))
    chosen = np.argpartition(keys, n - 1, axis=1)[:, :n]  # n rows drawn without replacement
    labels[chosen, np.arange(1, permutations + 1)[:, None]] = 1.0

    with _torch_threads(TORCH_THREADS), torch.no_grad():
        pooled = torch.from_numpy(np.vstack([x, y]).astype(np.float32))
        sigma = _bandwidth(pooled, rng)
        if sigma == 0.0:  # every row the same
            return MultivariateResult(0.0, 1.0, n, m)
        kernel = _squared_distances(pooled, pooled)
        kernel.mul_(-1.0 / (2.0 * sigma * sigma)).exp_()
        kernel.fill_diagonal_(0.0)
        statistics = _mmd_sums(kernel, torch.from_numpy(labels), n, m).numpy()
    observed = float(statistics[0])
    exceeded = int(np.count_nonzero(statistics[1:] >= observed))
    return MultivariateResult(observed, (1 + exceeded) / (1 + permutations), n, m)
