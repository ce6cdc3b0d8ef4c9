"""The monitors' SQL layer on its own (SQLite and PostgreSQL): runs with their features and read
position, forgetting a monitor, and alert pages by status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from featurestore.db import engine as sql_engine
from monitors.sql import alerts as alert_sql
from monitors.sql import outbox as outbox_sql
from monitors.sql import runs as run_sql
from monitors.store import BASELINES
from tests.conftest import POSTGRES_URL

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, configure):
    settings = configure(database_url=POSTGRES_URL) if request.param == "postgresql" \
        else configure()
    return sql_engine(settings)


@pytest.fixture
def monitor() -> str:
    return f"sql-{uuid.uuid4().hex[:12]}"  # PostgreSQL outlives the test: a monitor of its own


def _store_run(engine, monitor: str, at: datetime, cursor: dict[str, int]) -> int:
    with engine.begin() as conn:
        baseline = conn.execute(sa.insert(BASELINES).values(
            subject=f"view:{monitor}-{at:%H%M}", version=1, export_id="e", export_path="/x",
            rows=1, sample_rows=1, sample_path="/x", profile={}, created_at=at,
        )).inserted_primary_key[0]
        return run_sql.insert_run(conn, {
            "monitor": monitor, "baseline_id": baseline, "window_start": at, "window_end": at,
            "status": "checked", "reference_rows": 1, "current_rows": 1, "drifted_columns": 1,
            "checked_columns": 1, "drift_share": 0.5, "dataset_drift": True,
            "newest_events": {}, "cursor": cursor, "seconds": 0.0, "created_at": at,
        }, [{"feature": "v:a", "kind": "numeric", "method": "ks", "statistic": 0.01,
             "threshold": 0.05, "drifted": True, "reference_rows": 1, "current_rows": 1,
             "reference_null_rate": 0.0, "current_null_rate": 0.0}])


def _open_alert(engine, monitor: str, run_id: int, target: str) -> dict:
    with engine.begin() as conn:
        alert = alert_sql.insert_alert(
            conn, dedup_key=f"{monitor}/feature_drift/{target}", monitor=monitor,
            rule="feature_drift", target=target, severity="warning", status="triggered",
            summary="s", details={}, first_run_id=run_id, last_run_id=run_id, silenced=False,
            triggered_at=T0, last_fired_at=T0, clean_windows=0, open_windows=1, flaps=0,
        )
        outbox_sql.insert_messages(conn, [{
            "alert_id": alert["alert_id"], "dedup_key": alert["dedup_key"], "notifier": "n",
            "event": "trigger", "alert": {}, "status": "pending", "attempts": 0,
            "next_attempt_at": T0, "created_at": T0,
        }])
        return alert


def test_runs_come_back_with_their_features_and_the_newest_read_position(db, monitor) -> None:
    assert run_sql.read_position(db, monitor) == (None, None)
    first = _store_run(db, monitor, T0, {"0": 10})
    second = _store_run(db, monitor, T0 + timedelta(minutes=5), {"0": 20, "1": 3})
    assert run_sql.read_position(db, monitor) == ({0: 20, 1: 3}, T0 + timedelta(minutes=5))
    with db.connect() as conn:
        newest = run_sql.newest_runs(conn, monitor, 5)
        assert [row.run_id for row, _ in newest] == [second, first]
        assert [[f.feature for f in features] for _, features in newest] == [["v:a"], ["v:a"]]
        assert [row.run_id for row in run_sql.page_of_runs(conn, monitor, 5, second)] == [first]
        assert run_sql.latest_runs(conn, [monitor])[monitor].run_id == second
        assert run_sql.run_with_features(conn, second + 1000) is None


def test_forgetting_a_monitor_deletes_its_runs_alerts_and_notifications(db, monitor) -> None:
    run_id = _store_run(db, monitor, T0, {"0": 1})
    _open_alert(db, monitor, run_id, "v:a")
    with db.begin() as conn:
        assert alert_sql.open_alert_counts(conn, [monitor]) == {monitor: 1}
        run_sql.forget_monitor(conn, monitor)
    assert run_sql.read_position(db, monitor) == (None, None)
    with db.connect() as conn:
        assert alert_sql.open_alerts(conn, monitor) == {}
        assert run_sql.run_with_features(conn, run_id) is None
    assert [row for row in outbox_sql.due(db, T0, [], 100) if row.dedup_key.startswith(monitor)] == []


def test_alert_pages_by_status(db, monitor) -> None:
    run_id = _store_run(db, monitor, T0, {"0": 1})
    first = _open_alert(db, monitor, run_id, "v:a")
    second = _open_alert(db, monitor, run_id, "v:b")
    with db.begin() as conn:
        alert_sql.update_alert(conn, first["alert_id"], status="resolved")
    with db.connect() as conn:
        def page(status: str) -> list[int]:
            return [a["alert_id"] for a in alert_sql.page_of_alerts(conn, status, monitor, 10, None)]

        assert page("open") == page("triggered") == [second["alert_id"]]
        assert page("resolved") == [first["alert_id"]]
        assert page("all") == [second["alert_id"], first["alert_id"]]
