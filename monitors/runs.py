"""One window checked against its baseline and stored, with its alerts, in one transaction.

`check_window` judges the window (`monitors.run_evaluation`, pure), writes Evidently's report
(`monitors.report`), then stores the run, one row per feature, the read position after the
window (`monitors.sql.runs`) and moves the alerts on (`monitors.rules`, `monitors.alerts`)
together: after a crash the window is read and checked again, never half-stored or skipped.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Connection, Engine

from featurestore.timestamps import assume_utc
from monitors.alerts import apply_window
from monitors.baseline import Baseline
from monitors.capture import Window
from monitors.config import MonitorsFile
from monitors.report import ReportFiles, write_report
from monitors.rules import CHECKED, ColumnOutcome, RunOutcome, evaluate
from monitors.run_evaluation import WindowCheck, checked_columns, evaluate_window
from monitors.sql import runs as sql


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    status: str
    current_rows: int
    drifted: list[str]  # definition names
    alerts: list[dict]  # alerts opened or changed by this window
    report_html: str | None


def history(conn: Connection, monitor: str, runs: int) -> list[RunOutcome]:
    """The monitor's newest `runs` runs as the rules see them, oldest first."""
    return [
        RunOutcome(
            run_id=row.run_id, status=row.status, window_end=assume_utc(row.window_end),
            current_rows=row.current_rows,
            columns={f.feature: ColumnOutcome(f.drifted, f.method, f.statistic, f.threshold,
                                              f.reference_null_rate, f.current_null_rate)
                     for f in features},
            drift_share=row.drift_share, multivariate_p_value=row.multivariate_p_value,
            multivariate_drifted=row.multivariate_drifted,
            newest_events={v: datetime.fromisoformat(t) for v, t in row.newest_events.items()},
        )
        for row, features in reversed(sql.newest_runs(conn, monitor, runs))
    ]


def _report(check: WindowCheck, reference: pa.Table, out: Path,
            max_rows: int) -> ReportFiles | None:
    """Evidently's report of the tested columns; None when none had a usable value."""
    if not check.testable:
        return None
    return write_report(
        reference.select(check.testable), check.current.select(check.testable),
        methods=check.methods, thresholds=check.thresholds, drift_share=check.drift_share,
        max_rows=max_rows, out=out, kinds=check.kinds,
    )


def _run_row(name: str, baseline: Baseline, window: Window, check: WindowCheck,
             report: ReportFiles | None, seconds: float, now: datetime) -> dict[str, Any]:
    multivariate = check.multivariate
    return {
        "monitor": name, "baseline_id": baseline.baseline_id, "window_start": window.start,
        "window_end": window.end, "status": check.status,
        "reference_rows": check.reference_rows, "current_rows": check.current_rows,
        "drifted_columns": len(check.drifted), "checked_columns": len(check.outcomes),
        "drift_share": check.drift_share, "dataset_drift": check.dataset_drift,
        "multivariate_statistic": multivariate.statistic if multivariate else None,
        "multivariate_p_value": multivariate.p_value if multivariate else None,
        "multivariate_drifted": check.multivariate_drifted,
        "newest_events": {v: t.isoformat() for v, t in window.newest_events.items()},
        "report_html": str(report.html) if report else None,
        "report_json": str(report.json) if report else None,
        "cursor": {str(p): o for p, o in window.cursor.items()},
        "seconds": seconds, "created_at": now,
    }


def _feature_rows(check: WindowCheck, baseline: Baseline,
                  names: dict[str, str]) -> list[dict[str, Any]]:
    by_feature = {feature: column for column, feature in names.items()}
    rows = []
    for feature, outcome in check.outcomes.items():
        tested = check.tested.get(feature)
        rows.append({
            "feature": feature, "kind": baseline.profile[by_feature[feature]]["kind"],
            "method": outcome.method, "statistic": outcome.statistic,
            "threshold": outcome.threshold, "drifted": outcome.drifted,
            "reference_rows": tested.reference_rows - tested.reference_nulls if tested else 0,
            "current_rows": tested.current_rows - tested.current_nulls if tested else 0,
            "reference_null_rate": outcome.reference_null_rate,
            "current_null_rate": outcome.current_null_rate,
        })
    return rows


def _move_alerts(conn: Connection, config: MonitorsFile, name: str, run_id: int, *,
                 now: datetime, public_url: str) -> list[dict]:
    """The rules judge the monitor's newest runs (as many as its longest feature_drift rule
    reads), and its alerts move on by their verdict."""
    monitor = config.monitors[name]
    depth = max([r.consecutive for r in monitor.rules if r.kind == "feature_drift"] + [1])
    evaluation = evaluate(name, monitor, history(conn, name, depth))
    return apply_window(conn, config, name, run_id, evaluation, now=now, public_url=public_url)


def check_window(
    engine: Engine,
    config: MonitorsFile,
    name: str,
    baseline: Baseline,
    window: Window,
    *,
    reports_dir: Path,
    public_url: str,
    now: datetime | None = None,
) -> RunSummary:
    began = time.perf_counter()
    monitor = config.monitors[name]
    names = checked_columns(name, monitor, baseline)
    reference = baseline.sample(list(names))
    check = evaluate_window(monitor, names, baseline.profile, reference, window.table)
    report = None
    if check.status == CHECKED and monitor.report:
        stem = reports_dir / name / f"{window.start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        report = _report(check, reference, stem, monitor.report_max_rows)
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        run = _run_row(name, baseline, window, check, report, time.perf_counter() - began, now)
        run_id = sql.insert_run(conn, run, _feature_rows(check, baseline, names))
        alerts = _move_alerts(conn, config, name, run_id, now=now, public_url=public_url)
    return RunSummary(run_id, check.status, check.current_rows, check.drifted, alerts,
                      str(report.html) if report else None)


def resume_point(engine: Engine, monitor: str) -> tuple[dict[int, int] | None, datetime | None]:
    """Where the monitor's next window starts: the read position stored with its newest run,
    and that run's window end (so time windows go on without a gap across a restart)."""
    return sql.read_position(engine, monitor)
