"""Runs and run features: one row per checked window and one per checked column, with the
window's read position (`cursor`), so a run and the position after it commit together."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from featurestore.timestamps import assume_utc
from monitors.sql import inserted_id
from monitors.store import ALERTS, OUTBOX, RUN_FEATURES, RUNS


def insert_run(conn: Connection, run: dict[str, Any], features: list[dict[str, Any]]) -> int:
    """Store a run (RUNS' columns but run_id) and its feature rows (RUN_FEATURES' columns but
    run_id); returns the run's id."""
    run_id = inserted_id(conn.execute(sa.insert(RUNS).values(**run)))
    if features:
        conn.execute(sa.insert(RUN_FEATURES), [{**row, "run_id": run_id} for row in features])
    return run_id


def newest_runs(conn: Connection, monitor: str, runs: int) -> list[tuple[Row, list[Row]]]:
    """The monitor's newest `runs` runs, newest first, each with its feature rows."""
    rows = conn.execute(
        sa.select(RUNS).where(RUNS.c.monitor == monitor)
        .order_by(RUNS.c.run_id.desc()).limit(runs)
    ).all()
    features: dict[int, list[Row]] = {row.run_id: [] for row in rows}
    for feature in conn.execute(
        sa.select(RUN_FEATURES).where(RUN_FEATURES.c.run_id.in_(features))
    ):
        features[feature.run_id].append(feature)
    return [(row, features[row.run_id]) for row in rows]


def read_position(engine: Engine, monitor: str) -> tuple[dict[int, int] | None, datetime | None]:
    """The read position (capture partition -> next offset) stored with the monitor's newest
    run, and that run's window end; (None, None) before its first run."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(RUNS.c.cursor, RUNS.c.window_end).where(RUNS.c.monitor == monitor)
            .order_by(RUNS.c.run_id.desc()).limit(1)
        ).one_or_none()
    if row is None:
        return None, None
    return {int(p): o for p, o in row.cursor.items()}, assume_utc(row.window_end)


def latest_runs(conn: Connection, monitors: list[str]) -> dict[str, Row]:
    """Monitor -> its newest run, for those of `monitors` that ran."""
    newest = (
        sa.select(sa.func.max(RUNS.c.run_id))
        .where(RUNS.c.monitor.in_(monitors)).group_by(RUNS.c.monitor)
    )
    return {row.monitor: row for row in conn.execute(sa.select(RUNS).where(RUNS.c.run_id.in_(newest)))}


def page_of_runs(conn: Connection, monitor: str | None, limit: int,
                 before: int | None) -> Sequence[Row]:
    """Up to `limit` runs (of `monitor`, with ids below `before`, when given), newest first."""
    query = sa.select(RUNS).order_by(RUNS.c.run_id.desc()).limit(limit)
    if monitor is not None:
        query = query.where(RUNS.c.monitor == monitor)
    if before is not None:
        query = query.where(RUNS.c.run_id < before)
    return conn.execute(query).all()


def run_with_features(conn: Connection, run_id: int) -> tuple[Row, Sequence[Row]] | None:
    """Run `run_id` with its feature rows by feature name; None when there is no such run."""
    row = conn.execute(sa.select(RUNS).where(RUNS.c.run_id == run_id)).one_or_none()
    if row is None:
        return None
    features = conn.execute(
        sa.select(RUN_FEATURES).where(RUN_FEATURES.c.run_id == run_id)
        .order_by(RUN_FEATURES.c.feature)
    ).all()
    return row, features


def forget_monitor(conn: Connection, monitor: str) -> None:
    """Delete the monitor's runs, alerts and their notifications (a demo starting over); its
    silences stay."""
    alerts = sa.select(ALERTS.c.alert_id).where(ALERTS.c.monitor == monitor)
    runs = sa.select(RUNS.c.run_id).where(RUNS.c.monitor == monitor)
    conn.execute(sa.delete(OUTBOX).where(OUTBOX.c.alert_id.in_(alerts)))
    conn.execute(sa.delete(ALERTS).where(ALERTS.c.monitor == monitor))
    conn.execute(sa.delete(RUN_FEATURES).where(RUN_FEATURES.c.run_id.in_(runs)))
    conn.execute(sa.delete(RUNS).where(RUNS.c.monitor == monitor))
