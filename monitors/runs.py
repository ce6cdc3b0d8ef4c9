"""One window checked against its baseline and stored, with its alerts, in one transaction.

`check_window` runs the fast per-feature check (`monitors.drift`), the optional multivariate test
(`monitors.multivariate`) and Evidently's report (`monitors.report`), then writes the run, one row
per feature, the read position after the window, the alert changes and their notifications
together: after a crash the window is read and checked again, never half-stored or skipped.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.alerts import apply_window
from monitors.baseline import Baseline
from monitors.capture import Window
from monitors.columns import missing_values
from monitors.config import SCORE_COLUMN, MonitorConfig, MonitorConfigError, MonitorsFile
from monitors.drift import ColumnDrift, DriftResult, check_drift
from monitors.multivariate import MultivariateResult, mmd_test
from monitors.report import ReportFiles, write_report
from monitors.rules import CHECKED, TOO_FEW_ROWS, ColumnOutcome, RunOutcome, evaluate
from monitors.store import RUN_FEATURES, RUNS

NO_VALUES = "no_values"  # the method recorded for a feature with no usable value in the window


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    status: str
    current_rows: int
    drifted: list[str]  # definition names
    alerts: list[dict]  # alerts opened or changed by this window
    report_html: str | None


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


def _current(window: Window, reference: pa.Table) -> pa.Table:
    """The window's columns in the reference's types; a column never captured is all null."""
    columns = []
    for name, kind in zip(reference.column_names, reference.schema.types, strict=True):
        if name in window.table.column_names:
            column = window.table.column(name)
            columns.append(column if column.type == kind else pc.cast(column, kind, safe=False))
        else:
            columns.append(pa.nulls(window.table.num_rows, kind))
    return pa.Table.from_arrays(columns, names=reference.column_names)


def _null_rate(column: pa.ChunkedArray) -> float:
    return missing_values(column) / len(column) if len(column) else 0.0


def _usable(column: pa.ChunkedArray) -> bool:
    """Any value a drift test can use (not null, NaN or infinite)?"""
    if pa.types.is_floating(column.type):
        return pc.any(pc.is_finite(column)).as_py() or False
    return column.null_count < len(column)


def _no_values(current: pa.ChunkedArray, reference_null_rate: float) -> ColumnOutcome:
    """A feature the window has no usable value of counts as drifted: whatever served it
    broke, and no statistic can say otherwise. The statistic is its null rate."""
    rate = _null_rate(current)
    return ColumnOutcome(drifted=True, method=NO_VALUES, statistic=rate, threshold=1.0,
                         reference_null_rate=reference_null_rate, current_null_rate=rate)


def _outcomes(result: DriftResult, names: dict[str, str], baseline: Baseline,
              current: pa.Table) -> dict[str, ColumnOutcome]:
    return {
        names[c.column]: ColumnOutcome(
            drifted=c.drifted, method=c.method, statistic=c.statistic, threshold=c.threshold,
            reference_null_rate=baseline.profile[c.column]["sample_null_rate"],
            current_null_rate=_null_rate(current.column(c.column)),
        )
        for c in result.columns
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def history(conn: Connection, monitor: str, runs: int) -> list[RunOutcome]:
    """The monitor's newest `runs` runs as the rules see them, oldest first."""
    rows = conn.execute(
        sa.select(RUNS).where(RUNS.c.monitor == monitor)
        .order_by(RUNS.c.run_id.desc()).limit(runs)
    ).all()
    features: dict[int, dict[str, ColumnOutcome]] = {row.run_id: {} for row in rows}
    for f in conn.execute(sa.select(RUN_FEATURES).where(RUN_FEATURES.c.run_id.in_(features))):
        features[f.run_id][f.feature] = ColumnOutcome(
            f.drifted, f.method, f.statistic, f.threshold, f.reference_null_rate,
            f.current_null_rate,
        )
    return [
        RunOutcome(
            run_id=row.run_id, status=row.status, window_end=_aware(row.window_end),
            current_rows=row.current_rows, columns=features[row.run_id],
            drift_share=row.drift_share, multivariate_p_value=row.multivariate_p_value,
            multivariate_drifted=row.multivariate_drifted,
            newest_events={v: datetime.fromisoformat(t) for v, t in row.newest_events.items()},
        )
        for row in reversed(rows)
    ]


def _feature_row(run_id: int, feature: str, outcome: ColumnOutcome, tested, baseline: Baseline,
                 names: dict[str, str]) -> dict:
    column = next(c for c, reference in names.items() if reference == feature)
    return {
        "run_id": run_id, "feature": feature, "kind": baseline.profile[column]["kind"],
        "method": outcome.method, "statistic": outcome.statistic,
        "threshold": outcome.threshold, "drifted": outcome.drifted,
        "reference_rows": tested.reference_rows - tested.reference_nulls if tested else 0,
        "current_rows": tested.current_rows - tested.current_nulls if tested else 0,
        "reference_null_rate": outcome.reference_null_rate,
        "current_null_rate": outcome.current_null_rate,
    }


@dataclass(frozen=True)
class _Checked:
    outcomes: dict[str, ColumnOutcome]  # by definition name
    tested: dict[str, ColumnDrift]  # by definition name; features with no usable value absent
    multivariate: MultivariateResult | None
    report: ReportFiles | None


def _check(monitor: MonitorConfig, baseline: Baseline, names: dict[str, str],
           reference: pa.Table, current: pa.Table, methods: dict[str, str],
           thresholds: dict[str, float], report_stem) -> _Checked:
    testable = [c for c in names if _usable(current.column(c))]
    outcomes = {names[c]: _no_values(current.column(c), baseline.profile[c]["sample_null_rate"])
                for c in names if c not in testable}
    if not testable:
        return _Checked(outcomes, {}, None, None)
    methods = {c: m for c, m in methods.items() if c in testable}
    thresholds = {c: t for c, t in thresholds.items() if c in testable}
    kinds = {c: baseline.profile[c]["kind"] for c in testable}
    result = check_drift(
        reference, current, columns=testable, methods=methods, thresholds=thresholds,
        drift_share=monitor.drift.drift_share, kinds=kinds,
    )
    outcomes.update(_outcomes(result, names, baseline, current))
    multivariate = None
    if monitor.drift.multivariate is not None:
        options = monitor.drift.multivariate
        features = [c for c in names if c != SCORE_COLUMN]
        multivariate = mmd_test(
            reference.select(features), current.select(features),
            permutations=options.permutations, max_rows=options.max_rows,
        )
    report = None
    if monitor.report:
        report = write_report(
            reference.select(testable), current.select(testable), methods=methods,
            thresholds=thresholds, drift_share=monitor.drift.drift_share,
            max_rows=monitor.report_max_rows, out=report_stem, kinds=kinds,
        )
    return _Checked(outcomes, {names[c.column]: c for c in result.columns}, multivariate, report)


def check_window(
    engine: Engine,
    config: MonitorsFile,
    name: str,
    baseline: Baseline,
    window: Window,
    *,
    reports_dir,
    public_url: str,
    now: datetime | None = None,
) -> RunSummary:
    began = time.perf_counter()
    monitor = config.monitors[name]
    names = checked_columns(name, monitor, baseline)
    reference = baseline.sample(list(names))
    current = _current(window, reference)
    by_column = {reference_name: column for column, reference_name in names.items()}
    methods = {by_column[f]: m for f, m in monitor.drift.methods.items()}
    thresholds = {by_column[f]: t for f, t in monitor.drift.thresholds.items()}

    status = CHECKED if current.num_rows >= monitor.window.min_rows else TOO_FEW_ROWS
    checked = _Checked({}, {}, None, None)
    if status == CHECKED:
        stem = reports_dir / name / f"{window.start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        checked = _check(monitor, baseline, names, reference, current, methods, thresholds, stem)
    outcomes, multivariate, report = checked.outcomes, checked.multivariate, checked.report
    p_value = multivariate.p_value if multivariate is not None else None
    drifted_mv = (p_value < monitor.drift.multivariate.p_value) if p_value is not None else None
    drifted = sorted(f for f, o in outcomes.items() if o.drifted)
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        run_id = conn.execute(sa.insert(RUNS).values(
            monitor=name, baseline_id=baseline.baseline_id, window_start=window.start,
            window_end=window.end, status=status, reference_rows=reference.num_rows,
            current_rows=current.num_rows, drifted_columns=len(drifted),
            checked_columns=len(outcomes), drift_share=monitor.drift.drift_share,
            dataset_drift=bool(outcomes) and len(drifted) / len(outcomes)
            >= monitor.drift.drift_share,
            multivariate_statistic=multivariate.statistic if multivariate else None,
            multivariate_p_value=p_value, multivariate_drifted=drifted_mv,
            newest_events={v: t.isoformat() for v, t in window.newest_events.items()},
            report_html=str(report.html) if report else None,
            report_json=str(report.json) if report else None,
            cursor={str(p): o for p, o in window.cursor.items()},
            seconds=time.perf_counter() - began, created_at=now,
        )).inserted_primary_key[0]
        if outcomes:
            conn.execute(sa.insert(RUN_FEATURES), [
                _feature_row(run_id, feature, outcome, checked.tested.get(feature), baseline,
                             names)
                for feature, outcome in outcomes.items()
            ])
        depth = max([r.consecutive for r in monitor.rules if r.kind == "feature_drift"] + [1])
        evaluation = evaluate(name, monitor, history(conn, name, depth))
        alerts = apply_window(conn, config, name, run_id, evaluation, now=now,
                              public_url=public_url)
    return RunSummary(run_id, status, current.num_rows, drifted, alerts,
                      str(report.html) if report else None)


def resume_point(engine: Engine, monitor: str) -> tuple[dict[int, int] | None, datetime | None]:
    """Where the monitor's next window starts: the read position stored with its newest run,
    and that run's window end (so time windows go on without a gap across a restart)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(RUNS.c.cursor, RUNS.c.window_end).where(RUNS.c.monitor == monitor)
            .order_by(RUNS.c.run_id.desc()).limit(1)
        ).one_or_none()
    if row is None:
        return None, None
    return {int(p): o for p, o in row.cursor.items()}, _aware(row.window_end)
