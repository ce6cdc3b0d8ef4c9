"""One window judged against its baseline's reference sample, without I/O: per checked column
its outcome (drifted or not, by which test, null rates), the optional multivariate test and the
run's verdict (`checked`, or `too_few_rows` for a window below `min_rows`, which is not
tested). `monitors.runs` reads the sample, writes the report and stores what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from monitors.baseline import Baseline
from monitors.columns import missing_values
from monitors.config import SCORE_COLUMN, MonitorConfig, MonitorConfigError
from monitors.drift import ColumnDrift, ColumnKind, check_drift
from monitors.multivariate import MultivariateResult, mmd_test
from monitors.rules import CHECKED, TOO_FEW_ROWS, ColumnOutcome

NO_VALUES = "no_values"  # the method recorded for a feature with no usable value in the window
Profile = dict[str, dict[str, Any]]  # column -> its baseline profile (kind, sample_null_rate...)


def checked_columns(name: str, monitor: MonitorConfig, baseline: Baseline) -> dict[str, str]:
    """Column -> definition name of what `monitor` checks, from its baseline's columns."""
    by_reference = {reference: column for column, reference in baseline.references.items()}
    wanted = list(monitor.features) or [
        reference for reference in by_reference if reference != SCORE_COLUMN
    ]
    if monitor.score:
        wanted.append(SCORE_COLUMN)
    missing = [reference for reference in wanted if reference not in by_reference]
    if missing:
        hint = (" (build it with `featurestore monitors baseline --model ...` to include the "
                "model's scores)" if SCORE_COLUMN in missing else "")
        raise MonitorConfigError(
            f"monitors.{name}: baseline {baseline.subject} v{baseline.version} has no column "
            f"for {missing}{hint}"
        )
    return {by_reference[reference]: reference for reference in wanted}


@dataclass(frozen=True)
class WindowCheck:
    """A window's outcomes; columns are the baseline's, features their definition names."""

    status: str  # CHECKED | TOO_FEW_ROWS
    reference_rows: int
    current_rows: int
    drift_share: float  # the monitor's threshold
    current: pa.Table  # the window in the reference's columns and types
    outcomes: dict[str, ColumnOutcome] = field(default_factory=dict)  # by feature
    tested: dict[str, ColumnDrift] = field(default_factory=dict)  # by feature; tested ones
    multivariate: MultivariateResult | None = None
    multivariate_drifted: bool | None = None
    # What the report tests: the columns with a usable value, their methods and thresholds.
    testable: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, ColumnKind] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        return sorted(feature for feature, outcome in self.outcomes.items() if outcome.drifted)

    @property
    def dataset_drift(self) -> bool:
        return bool(self.outcomes) and len(self.drifted) / len(self.outcomes) >= self.drift_share


def current_table(window: pa.Table, reference: pa.Table) -> pa.Table:
    """The window's columns in the reference's types; a column never captured is all null."""
    columns = []
    for name, kind in zip(reference.column_names, reference.schema.types, strict=True):
        if name in window.column_names:
            column = window.column(name)
            columns.append(column if column.type == kind else pc.cast(column, kind, safe=False))
        else:
            columns.append(pa.nulls(window.num_rows, kind))
    return pa.Table.from_arrays(columns, names=reference.column_names)


def null_rate(column: pa.ChunkedArray) -> float:
    """Share of null or NaN values (0 for no rows)."""
    return missing_values(column) / len(column) if len(column) else 0.0


def usable(column: pa.ChunkedArray) -> bool:
    """Any value a drift test can use (not null, NaN or infinite)?"""
    if pa.types.is_floating(column.type):
        return pc.any(pc.is_finite(column)).as_py() or False
    return column.null_count < len(column)


def _no_values(current: pa.ChunkedArray, reference_null_rate: float) -> ColumnOutcome:
    """A feature the window has no usable value of counts as drifted: whatever served it
    broke, and no statistic can say otherwise. The statistic is its null rate."""
    rate = null_rate(current)
    return ColumnOutcome(drifted=True, method=NO_VALUES, statistic=rate, threshold=1.0,
                         reference_null_rate=reference_null_rate, current_null_rate=rate)


def _multivariate(monitor: MonitorConfig, names: dict[str, str], reference: pa.Table,
                  current: pa.Table) -> tuple[MultivariateResult | None, bool | None]:
    options = monitor.drift.multivariate
    if options is None:
        return None, None
    features = [c for c in names if c != SCORE_COLUMN]
    result = mmd_test(reference.select(features), current.select(features),
                      permutations=options.permutations, max_rows=options.max_rows)
    return result, result.p_value < options.p_value


def evaluate_window(monitor: MonitorConfig, names: dict[str, str], profile: Profile,
                    reference: pa.Table, window: pa.Table) -> WindowCheck:
    """Judge `window` (captured rows) against `reference` (the baseline's sample of the columns
    `names` maps to features) for `monitor`."""
    current = current_table(window, reference)
    by_feature = {feature: column for column, feature in names.items()}
    methods = {by_feature[f]: m for f, m in monitor.drift.methods.items()}
    thresholds = {by_feature[f]: t for f, t in monitor.drift.thresholds.items()}
    sizes = {"reference_rows": reference.num_rows, "current_rows": current.num_rows,
             "drift_share": monitor.drift.drift_share, "current": current}
    if current.num_rows < monitor.window.min_rows:
        return WindowCheck(TOO_FEW_ROWS, **sizes)
    testable = [c for c in names if usable(current.column(c))]
    outcomes = {names[c]: _no_values(current.column(c), profile[c]["sample_null_rate"])
                for c in names if c not in testable}
    if not testable:
        return WindowCheck(CHECKED, **sizes, outcomes=outcomes)
    methods = {c: m for c, m in methods.items() if c in testable}
    thresholds = {c: t for c, t in thresholds.items() if c in testable}
    kinds: dict[str, ColumnKind] = {c: profile[c]["kind"] for c in testable}
    result = check_drift(reference, current, columns=testable, methods=methods,
                         thresholds=thresholds, drift_share=monitor.drift.drift_share, kinds=kinds)
    for tested in result.columns:
        outcomes[names[tested.column]] = ColumnOutcome(
            drifted=tested.drifted, method=tested.method, statistic=tested.statistic,
            threshold=tested.threshold,
            reference_null_rate=profile[tested.column]["sample_null_rate"],
            current_null_rate=null_rate(current.column(tested.column)),
        )
    multivariate, multivariate_drifted = _multivariate(monitor, names, reference, current)
    return WindowCheck(
        CHECKED, **sizes, outcomes=outcomes,
        tested={names[tested.column]: tested for tested in result.columns},
        multivariate=multivariate, multivariate_drifted=multivariate_drifted,
        testable=testable, methods=methods, thresholds=thresholds, kinds=kinds,
    )
