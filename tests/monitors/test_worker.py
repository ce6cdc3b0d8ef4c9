"""Monitors end to end on generator traffic: shifts detected, seasonal days quiet, and the alert
carried through a real Kafka capture topic, the monitor worker, SQL and a real HTTP receiver,
across a receiver outage and a worker restart."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from featurestore.db import engine as sql_engine
from featurestore.export import EXPORT_METADATA_KEY
from fraud_example.generator import GeneratorConfig, transactions
from monitors.baseline import build_baseline
from monitors.capture import CaptureLog, Window
from monitors.config import parse_monitors
from monitors.notifiers import verify_signature
from monitors.runs import check_window
from monitors.store import ALERTS, OUTBOX, RUNS
from monitors.worker import MonitorWorker, WorkerReport
from tests.conftest import POSTGRES_URL
from tests.monitors.receiver import Receiver
from tests.servers import PostgresServer, wait_for

START = date(2026, 2, 2)  # a Monday
HISTORY_DAYS = 14
CARDS, MERCHANTS = 2_000, 300
VIEW = "txn"
COLUMNS = ("amount", "merchant_category", "country", "channel")
SECRET = "whsec-test"


def _config(name: str, receiver_url: str = "http://127.0.0.1:9/", **monitor) -> object:
    """Monitor `name` of view `txn`; it notifies the webhook at `receiver_url` only when
    asked (`notify="[hook]"`): the outbox is shared by every monitor of the database."""
    options = {"window": "{rows: 3000}", "rules": "[{kind: feature_drift}, "
               "{kind: null_rate, jump: 0.05}]", "report": "false", "notify": "[]", **monitor}
    lines = "\n".join(f"    {key}: {value}" for key, value in options.items())
    return parse_monitors(f"""
interval_seconds: 1
notifiers:
  hook: {{type: webhook, url: "{receiver_url}", secret_env: TEST_WEBHOOK_SECRET}}
monitors:
  {name}:
    feature_view: {VIEW}
{lines}
    auto_resolve_after: 2
""")


def _days(first: date, days: int, **drift) -> list[pa.Table]:
    config = GeneratorConfig(
        start=START, days=(first - START).days + days, cards=CARDS, merchants=MERCHANTS,
        **({"drift_start": first, **drift} if drift else {}),
    )
    return [day.select(COLUMNS) for day in transactions(config, first)]


@pytest.fixture(scope="module")
def training_export(tmp_path_factory) -> Path:
    """Fourteen days of generator traffic as a training export of view `txn`'s features."""
    table = pa.concat_tables(_days(START, HISTORY_DAYS))
    path = tmp_path_factory.mktemp("export") / "txn.parquet"
    description = {
        "export_id": f"exp-{uuid.uuid4().hex[:12]}", "feature_service": None,
        "feature_references": [f"{VIEW}:{c}" for c in COLUMNS], "features": list(COLUMNS),
        "entity_columns": [], "timestamp_field": "event_timestamp", "rows": table.num_rows,
        "created_at": datetime.now(UTC).isoformat(),
    }
    pq.write_table(table.replace_schema_metadata(
        {EXPORT_METADATA_KEY: json.dumps(description)}), path)
    return path


@pytest.fixture
def settings(configure, monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    return configure(database_url=POSTGRES_URL, capture_topic=f"capture-{uuid.uuid4().hex}")


@pytest.fixture
def baseline(settings, training_export):
    return build_baseline(settings, training_export, feature_view=VIEW, sample_rows=30_000)


def _window(table: pa.Table, at: datetime) -> Window:
    return Window(start=at, end=at + timedelta(hours=1), table=table, newest_events={},
                  cursor={})


def _check(settings, config, name, baseline, table, at) -> object:
    return check_window(sql_engine(settings), config, name, baseline, _window(table, at),
                        reports_dir=settings.reports_dir, public_url=settings.public_url)


LIVE = START + timedelta(days=HISTORY_DAYS)


@pytest.mark.parametrize(
    ("drift", "rule", "target"),
    [
        ({"amount_shift": 1.6}, "feature_drift", "txn:amount"),  # mean shift
        ({"amount_spread": 2.0}, "feature_drift", "txn:amount"),  # variance change
        ({"country_mix": {"US": 0.4, "ZZ": 0.6}}, "feature_drift", "txn:country"),  # new category
        ({"null_burst_rate": 0.3}, "null_rate", "txn:merchant_category"),  # null burst
    ],
    ids=["mean", "variance", "new-category", "null-burst"],
)
def test_generator_shifts_raise_an_alert_on_the_shifted_feature(
    settings, baseline, drift, rule, target
) -> None:
    name = f"shift_{uuid.uuid4().hex[:8]}"
    config = _config(name)
    (normal,) = _days(LIVE, 1)
    (shifted,) = _days(LIVE, 1, **drift)
    at = datetime.combine(LIVE, datetime.min.time(), UTC)
    quiet = _check(settings, config, name, baseline, normal, at)
    assert quiet.drifted == [] and quiet.alerts == []
    loud = _check(settings, config, name, baseline, shifted, at + timedelta(days=1))
    assert (rule, target) in {(a["rule"], a["target"]) for a in loud.alerts}
    untouched = {"txn:channel"} | ({"txn:country"} if target == "txn:amount" else set())
    assert not untouched & {a["target"] for a in loud.alerts}


def test_seasonal_days_without_drift_rarely_alarm(settings, baseline) -> None:
    """Fifty-two days of normal traffic after the training period, one window per day: each
    window spans the daily cycle, weekdays and weekends come and go, and at most 5% of windows
    raise anything. (Half-day windows do alarm, on the country mix: cards of each time zone pay
    at their own daytime, a real seasonal shift the window must span; see docs/monitoring.md.)"""
    name = f"quiet_{uuid.uuid4().hex[:8]}"
    config = _config(name, window="{rows: 1000}")
    windows = alarms = 0
    at = datetime.combine(LIVE, datetime.min.time(), UTC)
    for day in _days(LIVE, 52):
        summary = _check(settings, config, name, baseline, day, at)
        windows += 1
        alarms += bool(summary.drifted) or any(
            a["last_run_id"] == summary.run_id for a in summary.alerts
        )
        at += timedelta(days=1)
    assert windows >= 50
    assert alarms / windows <= 0.05, f"{alarms} of {windows} quiet windows alarmed"


def _runs(settings, name: str) -> int:
    with sql_engine(settings).connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(RUNS).where(RUNS.c.monitor == name)
        ).scalar_one()


def _until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.2)


def test_alert_reaches_the_receiver_across_an_outage_and_a_worker_restart(
    settings, training_export, kafka_bootstrap
) -> None:
    # A database of its own (SQLite): the worker's outbox delivers every monitor's messages.
    settings = settings.model_copy(update={
        "kafka_bootstrap_servers": kafka_bootstrap, "capture_rate": 1.0,
        "public_url": "https://features.example",
        "database_url": f"sqlite:///{settings.data_dir / 'monitors.db'}",
    })
    build_baseline(settings, training_export, feature_view=VIEW, sample_rows=30_000)
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    receiver = Receiver()  # not started: the first deliveries are refused
    config = _config(name, receiver.url + "/alerts", report="true", report_max_rows="5000",
                     notify="[hook]")
    (normal,) = _days(LIVE, 1)
    (shifted,) = _days(LIVE, 1, amount_shift=2.0)
    capture = CaptureLog(settings, "test-producer")
    subject = f"view:{VIEW}"

    def send(table: pa.Table) -> None:
        capture.offer_table(subject, table.slice(0, 3_000), list(COLUMNS))
        assert capture.flush(30)
        time.sleep(1.1)  # offers within one second may share a message (and so a window)

    send(normal)
    send(shifted)

    first = MonitorWorker(settings, config)
    report = first.run(threading.Event(), until_idle=True)
    assert [run.drifted for run in report.runs] == [[], ["txn:amount"]]
    assert report.delivered == 0 and report.retried >= 1  # the receiver is down
    assert _runs(settings, name) == 2

    receiver.start()
    try:
        second = MonitorWorker(settings, config)  # a restarted worker: state comes from SQL
        _until(lambda: second.run(threading.Event(), until_idle=True).delivered == 1
               or receiver.received, 30, "the alert delivered after the receiver came back")
        assert _runs(settings, name) == 2  # the windows were not checked twice
        (page,) = receiver.received
        body = page.json()
        assert verify_signature(SECRET, page.headers["x-featurestore-timestamp"], page.body,
                                page.headers["x-featurestore-signature"])
        assert body["event"] == "trigger" and body["dedup_key"].startswith(f"{name}/page/")
        assert [a["dedup_key"] for a in body["alerts"]] == [f"{name}/feature_drift/txn:amount"]
        assert body["report_url"].startswith("https://features.example/v1/drift-runs/")
        assert Path(report.runs[1].report_html).read_text().count("amount") > 0

        # Two clean windows: the alert resolves itself, and the receiver hears it once.
        for table in _days(LIVE + timedelta(days=2), 2):
            send(table)
        _until(lambda: second.run(threading.Event(), until_idle=True) and len(
            receiver.received) == 2, 30, "the resolve delivered")
        assert receiver.received[1].json()["event"] == "resolve"
    finally:
        receiver.stop()
        capture.close()


def _outbox(engine, monitor: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(OUTBOX.c.event, OUTBOX.c.status)
            .join(ALERTS, ALERTS.c.alert_id == OUTBOX.c.alert_id)
            .where(ALERTS.c.monitor == monitor).order_by(OUTBOX.c.message_id)
        )]


def test_a_deleted_sample_file_raises_a_health_alert_until_it_is_back(
    settings, baseline, kafka_bootstrap
) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap_servers": kafka_bootstrap})
    name = f"health_{uuid.uuid4().hex[:8]}"
    config = _config(name, rules="[{kind: feature_drift}, "
                     "{kind: monitor_health, after_failures: 2, severity: critical}]",
                     notify="[hook]")
    kept = baseline.sample_path.read_bytes()
    baseline.sample_path.unlink()
    worker = MonitorWorker(settings, config)
    report = WorkerReport()
    try:
        worker.check_all(report)
        assert "is missing" in report.failures[name] and _outbox(worker.engine, name) == []
        worker.check_all(report)  # the second failure in a row: the monitor cannot run
        assert _outbox(worker.engine, name) == [("trigger", "pending")]
        with worker.engine.connect() as conn:
            (alert,) = conn.execute(sa.select(ALERTS).where(ALERTS.c.monitor == name)).all()
        assert (alert.rule, alert.severity, alert.status) == (
            "monitor_health", "critical", "triggered")
        assert f"the sample of baseline view:{VIEW} v{baseline.version} is missing" in (
            alert.summary)
        baseline.sample_path.write_bytes(kept)
        worker.check_all(report)  # it runs again: resolved
        assert name not in report.failures
        assert _outbox(worker.engine, name) == [("trigger", "pending"), ("resolve", "pending")]
    finally:
        worker.close()


@pytest.mark.heavy
@pytest.mark.postgres
def test_monitors_run_rides_out_a_database_outage(configure, training_export, kafka_bootstrap,
                                                   monkeypatch) -> None:
    # `monitors run`'s loop (MonitorWorker.run) on a PostgreSQL of the test's own, stopped at a
    # known point: right after the first window's page was delivered and recorded.
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    database = PostgresServer()  # started
    receiver = Receiver().start()
    stop = threading.Event()
    capture = None
    try:
        settings = configure(database_url=database.url, capture_topic=f"capture-{uuid.uuid4().hex}",
                             kafka_bootstrap_servers=kafka_bootstrap, capture_rate="1.0")
        build_baseline(settings, training_export, feature_view=VIEW, sample_rows=20_000)
        name = "outage"
        config = _config(name, receiver.url + "/alerts", notify="[hook]",
                         min_open_windows="1")
        worker = MonitorWorker(settings, config)
        running = threading.Thread(target=worker.run, args=(stop,))
        running.start()
        capture = CaptureLog(settings, "test-producer")
        (shifted,) = _days(LIVE, 1, amount_shift=2.0)
        normal = _days(LIVE + timedelta(days=2), 2)

        def send(table: pa.Table) -> None:
            capture.offer_table(f"view:{VIEW}", table.slice(0, 3_000), list(COLUMNS))
            assert capture.flush(30)
            time.sleep(1.1)  # offers within one second may share a message (and so a window)

        send(shifted)
        wait_for(lambda: _outbox(worker.engine, name) == [("trigger", "delivered")], 60,
                 "the first page delivered and recorded")
        database.stop()
        for table in normal:  # two clean windows while the database is away
            send(table)
        time.sleep(20)  # the outage
        assert running.is_alive()  # no crash
        database.start()
        wait_for(lambda: _outbox(worker.engine, name) == [("trigger", "delivered"),
                                                          ("resolve", "delivered")], 60,
                 "the resolve delivered once the database is back")
        stop.set()
        running.join(30)
        with worker.engine.connect() as conn:
            runs = conn.execute(sa.select(RUNS).where(RUNS.c.monitor == name)
                                .order_by(RUNS.c.run_id)).all()
        # No window lost, none checked twice.
        assert [run.current_rows for run in runs] == [3_000] * 3
        assert len({run.window_start for run in runs}) == 3
        assert [r.json()["event"] for r in receiver.received] == ["trigger", "resolve"]
    finally:
        stop.set()
        receiver.stop()
        if capture is not None:
            capture.close()
        database.remove()
