"""The alert lifecycle on a real SQL database: dedup, auto-resolve, silences, ack and resolve."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from featurestore.db import engine as sql_engine
from monitors.alerts import (
    AlertStateError,
    UnknownAlertError,
    acknowledge,
    add_silence,
    apply_window,
    clear_health,
    end_silence,
    list_silences,
    raise_health,
    resolve,
)
from monitors.config import parse_monitors
from monitors.rules import Evaluation, Firing
from monitors.store import ALERTS, BASELINES, OUTBOX, RUNS, SILENCES
from tests.conftest import POSTGRES_URL

CONFIG = parse_monitors("""
notifiers:
  pager: {type: pagerduty, routing_key_env: TEST_PD_KEY}
  am: {type: alertmanager, url: "http://127.0.0.1:9"}
monitors:
  m:
    feature_view: v
    window: {rows: 100}
    rules: [{kind: feature_drift}]
    auto_resolve_after: 2
    notify: [pager, am]
""")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
URL = "https://features.example"
DRIFT = Firing("feature_drift", "v:a", "warning", "[m] v:a drifted", {"statistic": 0.3})
JUDGED = frozenset({"feature_drift", "drift_share", "multivariate", "null_rate", "freshness"})


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, configure):
    if request.param == "postgresql":
        settings = configure(database_url=POSTGRES_URL)
    else:
        settings = configure()
    engine = sql_engine(settings)
    # The PostgreSQL database outlives the test: start monitor `m` from a clean slate.
    with engine.begin() as conn:
        alerts = sa.select(ALERTS.c.alert_id).where(ALERTS.c.monitor == "m")
        conn.execute(sa.delete(OUTBOX).where(OUTBOX.c.alert_id.in_(alerts)))
        conn.execute(sa.delete(ALERTS).where(ALERTS.c.monitor == "m"))
        conn.execute(sa.delete(RUNS).where(RUNS.c.monitor == "m"))
        conn.execute(sa.delete(SILENCES).where(SILENCES.c.monitor == "m"))
    return engine


class Windows:
    """Stores runs of monitor `m` and applies evaluations to them, one window at a time."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.now = T0
        with engine.begin() as conn:
            self.baseline = conn.execute(sa.insert(BASELINES).values(
                subject=f"view:v-{uuid.uuid4().hex}", version=1,
                export_id="exp-test", export_path="/x", rows=1, sample_rows=1, sample_path="/x",
                profile={}, created_at=T0,
            )).inserted_primary_key[0]

    def close(self, firing: list[Firing], judged: frozenset[str] = JUDGED, *,
              config=None, symptoms: frozenset = frozenset()) -> list[dict]:
        self.now += timedelta(minutes=5)
        with self.engine.begin() as conn:
            run_id = conn.execute(sa.insert(RUNS).values(
                monitor="m", baseline_id=self.baseline, window_start=self.now,
                window_end=self.now, status="checked", reference_rows=1, current_rows=1,
                drifted_columns=0, checked_columns=1, drift_share=0.5, dataset_drift=False,
                newest_events={}, cursor={}, seconds=0.0, created_at=self.now,
            )).inserted_primary_key[0]
            return apply_window(conn, config or CONFIG, "m", run_id,
                                Evaluation(firing, judged, symptoms), now=self.now,
                                public_url=URL)


def _outbox(engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(OUTBOX.c.notifier, OUTBOX.c.event, OUTBOX.c.alert_id)
            .join(ALERTS, ALERTS.c.alert_id == OUTBOX.c.alert_id)
            .where(ALERTS.c.monitor == "m").order_by(OUTBOX.c.message_id)
        )
        return [tuple(row) for row in rows]


def test_one_alert_and_one_page_per_dedup_key_then_auto_resolve(db) -> None:
    windows = Windows(db)
    first = windows.close([DRIFT])
    (alert,) = first
    assert alert["dedup_key"] == "m/feature_drift/v:a" and alert["status"] == "triggered"
    for _ in range(3):
        (again,) = windows.close([DRIFT])
        assert again["alert_id"] == alert["alert_id"] and again["clean_windows"] == 0
    events = _outbox(db)
    # PagerDuty paged once; Alertmanager re-sent each window it still fired (it forgets
    # alerts that are not re-sent).
    assert [e for e in events if e[0] == "pager"] == [("pager", "trigger", alert["alert_id"])]
    assert [e[1] for e in events if e[0] == "am"] == ["trigger", "refire", "refire", "refire"]

    (clean,) = windows.close([])
    assert clean["status"] == "triggered" and clean["clean_windows"] == 1
    # A window that could not judge drift (too few rows) is not a clean window.
    assert windows.close([], frozenset({"freshness"})) == []
    (resolved,) = windows.close([])
    assert resolved["status"] == "resolved" and resolved["resolved_by"] == "auto"
    assert _outbox(db)[-2:] == [("pager", "resolve", alert["alert_id"]),
                                ("am", "resolve", alert["alert_id"])]
    # Firing again later is a new incident: a new alert and a new page.
    (reopened,) = windows.close([DRIFT])
    assert reopened["alert_id"] != alert["alert_id"]
    assert _outbox(db)[-2:] == [("pager", "trigger", reopened["alert_id"]),
                                ("am", "trigger", reopened["alert_id"])]


def test_the_notification_carries_links_and_no_secret(db, monkeypatch) -> None:
    monkeypatch.setenv("TEST_PD_KEY", "secret-routing-key")
    windows = Windows(db)
    (alert,) = windows.close([DRIFT])
    with db.connect() as conn:
        stored = conn.execute(
            sa.select(OUTBOX.c.alert).where(OUTBOX.c.alert_id == alert["alert_id"])
        ).scalars().first()
    assert stored["report_url"] == f"{URL}/v1/drift-runs/{alert['last_run_id']}/report"
    assert stored["alert_url"] == f"{URL}/v1/alerts/{alert['alert_id']}"
    # One page per window: its key names the page, its alerts their own keys.
    assert stored["dedup_key"] == f"m/page/{alert['alert_id']}" and stored["event"] == "trigger"
    assert [a["dedup_key"] for a in stored["alerts"]] == ["m/feature_drift/v:a"]
    assert stored["summary"] == "[m] v:a drifted" and stored["details"] == {"statistic": 0.3}
    assert "secret-routing-key" not in str(stored)


def test_acknowledge_and_resolve_by_a_person(db) -> None:
    windows = Windows(db)
    (alert,) = windows.close([DRIFT])
    acked = acknowledge(db, CONFIG, alert["alert_id"], "alice", public_url=URL)
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "alice"
    again = acknowledge(db, CONFIG, alert["alert_id"], "bob", public_url=URL)
    assert again["acknowledged_by"] == "alice"  # acknowledging twice changes nothing
    # Alertmanager has no acknowledgement; PagerDuty gets one, once.
    assert [e[:2] for e in _outbox(db)].count(("pager", "acknowledge")) == 1
    assert ("am", "acknowledge") not in [e[:2] for e in _outbox(db)]
    # Still firing: stays acknowledged, no new page.
    (still,) = windows.close([DRIFT])
    assert still["status"] == "acknowledged"
    done = resolve(db, CONFIG, alert["alert_id"], "alice", public_url=URL)
    assert done["status"] == "resolved" and done["resolved_by"] == "alice"
    with pytest.raises(AlertStateError, match=f"alert {alert['alert_id']} was already resolved"):
        resolve(db, CONFIG, alert["alert_id"], "bob", public_url=URL)
    with pytest.raises(AlertStateError, match="already resolved"):
        acknowledge(db, CONFIG, alert["alert_id"], "bob", public_url=URL)
    with pytest.raises(UnknownAlertError, match="no alert with id 987654321"):
        acknowledge(db, CONFIG, 987654321, "bob", public_url=URL)


def test_a_silence_holds_the_page_until_it_ends(db) -> None:
    windows = Windows(db)
    silence = add_silence(db, monitor="m", target="v:a", starts_at=T0,
                          ends_at=T0 + timedelta(minutes=12), created_by="alice",
                          comment="planned backfill")
    other = Firing("feature_drift", "v:b", "warning", "[m] v:b drifted", {})
    opened = windows.close([DRIFT, other])  # T0 + 5 min: inside the silence
    silenced = {a["target"]: a["silenced"] for a in opened}
    assert silenced == {"v:a": True, "v:b": False}
    assert {(e[0], e[1]) for e in _outbox(db) if e[2] == opened[0]["alert_id"]} == set()
    windows.close([DRIFT, other])  # T0 + 10 min: still silenced, no page
    assert len([e for e in _outbox(db) if e[2] == opened[0]["alert_id"]]) == 0
    assert [s["silence_id"] for s in list_silences(db, active_at=windows.now)] == [
        silence["silence_id"]
    ]
    (paged, _) = windows.close([DRIFT, other])  # T0 + 15 min: the silence is over
    assert paged["target"] == "v:a" and paged["silenced"] is False
    assert ("pager", "trigger", paged["alert_id"]) in _outbox(db)


def test_ending_a_silence_early(db) -> None:
    silence = add_silence(db, monitor="m", target=None, starts_at=T0,
                          ends_at=T0 + timedelta(hours=2), created_by="alice", comment="")
    ended = end_silence(db, silence["silence_id"], now=T0 + timedelta(minutes=1))
    assert ended["ends_at"] == (T0 + timedelta(minutes=1)).isoformat()
    active = list_silences(db, active_at=T0 + timedelta(minutes=2))
    assert silence["silence_id"] not in [s["silence_id"] for s in active]
    assert silence["silence_id"] in [s["silence_id"] for s in list_silences(db)]


def _messages(engine, notifier: str) -> list[dict]:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(OUTBOX.c.alert).join(ALERTS, ALERTS.c.alert_id == OUTBOX.c.alert_id)
            .where(ALERTS.c.monitor == "m", OUTBOX.c.notifier == notifier)
            .order_by(OUTBOX.c.message_id)
        ).scalars())


def test_one_bad_window_pages_once_with_the_drifted_features_inside(db) -> None:
    windows = Windows(db)
    features = [f"v:f{i:02d}" for i in range(60)]
    storm = [Firing("feature_drift", f, "warning", f"[m] {f} drifted", {}) for f in features]
    storm.append(Firing("drift_share", "dataset", "critical", "[m] 60 of 60 drifted", {}))
    opened = windows.close(storm)
    assert len(opened) == 61 and len({a["page_key"] for a in opened}) == 1
    (page,) = _messages(db, "pager")
    assert page["event"] == "trigger" and page["severity"] == "critical"
    assert page["details"]["drifted_features"] == features
    assert page["summary"].startswith("[m] 61 alerts: v:f00 drifted; v:f01 drifted")
    (am,) = _messages(db, "am")  # Alertmanager groups itself: each alert under its labels
    assert [a["dedup_key"] for a in am["alerts"]] == [f"m/feature_drift/{f}" for f in features] + [
        "m/drift_share/dataset"]
    # Still firing next window: no new page, one refire for Alertmanager.
    windows.close(storm)
    assert len(_messages(db, "pager")) == 1 and len(_messages(db, "am")) == 2
    # Acknowledging one alert acknowledges the page: one acknowledge, every alert in it.
    acknowledge(db, CONFIG, opened[5]["alert_id"], "alice", public_url=URL)
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger", "acknowledge"]
    with db.connect() as conn:
        statuses = set(conn.execute(
            sa.select(ALERTS.c.status).where(ALERTS.c.monitor == "m")).scalars())
    assert statuses == {"acknowledged"}
    # A person resolves one: the page stays open until its last alert resolves.
    resolve(db, CONFIG, opened[0]["alert_id"], "alice", public_url=URL)
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger", "acknowledge"]
    for _ in range(3):  # auto_resolve_after 2, min_open_windows 3
        windows.close([])
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger", "acknowledge", "resolve"]
    assert len(_messages(db, "pager")[-1]["alerts"]) == 61


def test_the_end_of_a_silence_does_not_page_an_acknowledged_alert(db) -> None:
    windows = Windows(db)
    add_silence(db, monitor="m", target=None, starts_at=T0, ends_at=T0 + timedelta(minutes=7),
                created_by="alice", comment="deploy")
    (alert,) = windows.close([DRIFT])  # T0 + 5 min: under the silence
    assert alert["silenced"] is True
    acknowledge(db, CONFIG, alert["alert_id"], "alice", public_url=URL)
    (after,) = windows.close([DRIFT])  # T0 + 10 min: the silence is over, still firing
    assert after["status"] == "acknowledged"
    assert _messages(db, "pager") == []  # nobody is paged for what someone is already on
    resolve(db, CONFIG, alert["alert_id"], "alice", public_url=URL)
    assert _messages(db, "pager") == []


FLAPPY = parse_monitors("""
notifiers:
  pager: {type: pagerduty, routing_key_env: TEST_PD_KEY}
monitors:
  m:
    feature_view: v
    window: {rows: 100}
    rules: [{kind: feature_drift, consecutive: 2}]
    auto_resolve_after: 1
    notify: [pager]
""")


def test_flapping_is_damped_in_sql(db) -> None:
    windows = Windows(db)
    for _ in range(10):  # drifted and clean in turn
        windows.close([DRIFT], config=FLAPPY)
        windows.close([], config=FLAPPY)
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger"]
    # A drifted window that does not complete `consecutive` is not clean.
    for _ in range(4):
        windows.close([], config=FLAPPY, symptoms=frozenset({("feature_drift", "v:a")}))
    with db.connect() as conn:
        (status, clean, flaps) = conn.execute(
            sa.select(ALERTS.c.status, ALERTS.c.clean_windows, ALERTS.c.flaps)
            .where(ALERTS.c.monitor == "m")).one()
    assert (status, clean, flaps) == ("triggered", 0, 9)
    for _ in range(8):  # 1 x 2^3 clean windows: the cap
        windows.close([], config=FLAPPY)
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger", "resolve"]


def test_a_monitor_that_cannot_run_raises_a_health_alert(db) -> None:
    now = T0
    for failures in (1, 2):
        assert raise_health(db, CONFIG, "m", "no baseline", failures, now=now,
                            public_url=URL) is None
    alert = raise_health(db, CONFIG, "m", "BaselineError: no baseline view:v v9", 3, now=now,
                         public_url=URL)
    assert (alert["rule"], alert["target"], alert["severity"]) == (
        "monitor_health", "monitor", "error")
    again = raise_health(db, CONFIG, "m", "still", 4, now=now, public_url=URL)
    assert again["alert_id"] == alert["alert_id"] and again["details"]["failures"] == 4
    (page,) = _messages(db, "pager")
    assert page["rule"] == "monitor_health" and "no baseline view:v v9" in page["summary"]
    resolved = clear_health(db, CONFIG, "m", now=now, public_url=URL)
    assert resolved["status"] == "resolved" and resolved["resolved_by"] == "auto"
    assert [m["event"] for m in _messages(db, "pager")] == ["trigger", "resolve"]
    assert clear_health(db, CONFIG, "m", now=now, public_url=URL) is None
