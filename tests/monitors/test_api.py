"""The monitoring API (`monitors.api`) in the real app, against real PostgreSQL: runs, alerts and
silences set up as rows, the alert lifecycle through HTTP, scopes, paging and the 4xx/503s."""

from __future__ import annotations

import json
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import POSTGRES_URL
from tests.servers import free_port

pytestmark = [pytest.mark.postgres]

SUFFIX = uuid.uuid4().hex[:8]  # this run's monitors, services and keys: no collision in the db
SCORING, STREAM = f"scoring_{SUFFIX}", f"stream_{SUFFIX}"
SERVICE, VIEW = f"svc_{SUFFIX}", f"view_{SUFFIX}"
FEATURES = [f"{VIEW}:amount_mean_1h", f"{VIEW}:txn_count_1h"]
PUBLIC_URL = "https://featurestore.example.com"
MONITORS_YAML = f"""
notifiers:
  hook: {{type: webhook, url: "http://127.0.0.1:9/hook", secret_env: API_TEST_HOOK_SECRET}}
  am: {{type: alertmanager, url: "http://127.0.0.1:9"}}
monitors:
  {SCORING}:
    feature_service: {SERVICE}
    features: {FEATURES}
    score: true
    window: {{rows: 1000}}
    rules:
      - {{kind: feature_drift, consecutive: 2}}
      - {{kind: drift_share, at_least: 0.5}}
    notify: [hook, am]
  {STREAM}:
    feature_view: {VIEW}
    window: {{minutes: 15, min_rows: 50}}
    rules:
      - {{kind: freshness, feature_view: {VIEW}, max_age_minutes: 10}}
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[types.SimpleNamespace]:
    """The app (API keys on) over an empty embedded registry, our tables in PostgreSQL, and one
    key per scope."""
    from featurestore.api.app import create_app
    from featurestore.apikeys import create_key
    from featurestore.db import engine
    from featurestore.settings import Settings

    tmp = tmp_path_factory.mktemp("monitors-api")
    config = tmp / "monitors.yaml"
    config.write_text(MONITORS_YAML)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATURESTORE_CONFIG", str(tmp / "absent.yaml"))
        patch.delenv("FEATURESTORE_PROFILE", raising=False)
        settings = Settings(
            data_dir=tmp / "data", database_url=POSTGRES_URL, monitors_config=config,
            api_auth="keys", public_url=PUBLIC_URL,
        )
    database = engine(settings)
    keys = {
        scope: create_key(database, f"{scope}-{SUFFIX}", scopes)[0]
        for scope, scopes in {
            "features": ["features:read"], "reader": ["monitors:read"],
            "oncall": ["monitors:write"], "admin": ["admin"],
        }.items()
    }
    with TestClient(create_app(settings)) as client:
        yield types.SimpleNamespace(
            client=client, settings=settings, engine=database, config=config, keys=keys,
            tmp=tmp,
        )
    _clean(database)


def _clean(database) -> None:
    from monitors.store import ALERTS, BASELINES, OUTBOX, RUN_FEATURES, RUNS, SILENCES

    mine = [SCORING, STREAM]
    with database.begin() as conn:
        alert_ids = sa.select(ALERTS.c.alert_id).where(ALERTS.c.monitor.in_(mine))
        run_ids = sa.select(RUNS.c.run_id).where(RUNS.c.monitor.in_(mine))
        conn.execute(OUTBOX.delete().where(OUTBOX.c.alert_id.in_(alert_ids)))
        conn.execute(ALERTS.delete().where(ALERTS.c.monitor.in_(mine)))
        conn.execute(RUN_FEATURES.delete().where(RUN_FEATURES.c.run_id.in_(run_ids)))
        conn.execute(RUNS.delete().where(RUNS.c.monitor.in_(mine)))
        conn.execute(SILENCES.delete().where(SILENCES.c.monitor.in_(mine)))
        conn.execute(BASELINES.delete().where(
            BASELINES.c.subject.in_([f"service:{SERVICE}", f"view:{VIEW}"])
        ))


@pytest.fixture
def api(app) -> types.SimpleNamespace:
    _clean(app.engine)
    app.config.write_text(MONITORS_YAML)
    return app


def _as(api, who: str | None) -> dict:
    return {"Authorization": f"Bearer {api.keys[who]}"} if who else {}


def _baseline(conn, subject: str) -> int:
    from monitors.store import BASELINES

    existing = conn.execute(
        sa.select(BASELINES.c.baseline_id).where(BASELINES.c.subject == subject)
    ).scalar()
    if existing is not None:
        return existing
    return conn.execute(BASELINES.insert().values(
        subject=subject, version=1, export_id="export-1", export_path="/exports/e.parquet",
        rows=10_000, sample_rows=1_000, sample_path="/baselines/s.parquet", profile={},
        created_at=datetime.now(UTC),
    )).inserted_primary_key[0]


def _run(api, monitor: str, *, features: list[tuple] = (), **values) -> int:
    from monitors.store import RUN_FEATURES, RUNS

    subject = f"service:{SERVICE}" if monitor == SCORING else f"view:{VIEW}"
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with api.engine.begin() as conn:
        row = {
            "monitor": monitor, "baseline_id": _baseline(conn, subject),
            "window_start": start, "window_end": start + timedelta(minutes=15),
            "status": "checked", "reference_rows": 1_000, "current_rows": 800,
            "drifted_columns": len([f for f in features if f[4]]),
            "checked_columns": len(features), "drift_share": 0.5, "dataset_drift": False,
            "newest_events": {VIEW: "2026-03-02T09:14:00+00:00"}, "cursor": {"0": 800},
            "seconds": 0.25, "created_at": start + timedelta(minutes=15, seconds=1),
        }
        run_id = conn.execute(RUNS.insert().values(**{**row, **values})).inserted_primary_key[0]
        for feature, method, statistic, threshold, drifted in features:
            conn.execute(RUN_FEATURES.insert().values(
                run_id=run_id, feature=feature, kind="num", method=method, statistic=statistic,
                threshold=threshold, drifted=drifted, reference_rows=1_000, current_rows=800,
                reference_null_rate=0.0, current_null_rate=0.125,
            ))
    return run_id


def _alert(api, monitor: str, target: str, status: str = "triggered", run_id=None) -> int:
    from monitors.store import ALERTS

    now = datetime.now(UTC)
    with api.engine.begin() as conn:
        return conn.execute(ALERTS.insert().values(
            dedup_key=f"{monitor}/feature_drift/{target}", monitor=monitor, rule="feature_drift",
            target=target, severity="warning", status=status, summary=f"{target} drifted",
            details={"windows": 2}, first_run_id=run_id, last_run_id=run_id, clean_windows=0,
            silenced=False, triggered_at=now, last_fired_at=now,
            resolved_at=now if status == "resolved" else None,
            resolved_by="auto" if status == "resolved" else None,
        )).inserted_primary_key[0]


def _outbox(api, alert_id: int) -> list:
    from monitors.store import OUTBOX

    with api.engine.connect() as conn:
        return conn.execute(
            sa.select(OUTBOX).where(OUTBOX.c.alert_id == alert_id).order_by(OUTBOX.c.message_id)
        ).all()


def test_scopes(api) -> None:
    client = api.client
    alert_id = _alert(api, SCORING, FEATURES[0])
    reads = ["/v1/monitors", f"/v1/monitors/{SCORING}", "/v1/drift-runs", "/v1/alerts",
             f"/v1/alerts/{alert_id}", "/v1/silences"]
    for path in reads:
        assert client.get(path).status_code == 401, path
        denied = client.get(path, headers=_as(api, "features"))
        assert denied.status_code == 403, path
        assert "monitors:read" in denied.json()["error"]["message"]
        # Writing is a scope of its own: it does not read.
        assert client.get(path, headers=_as(api, "oncall")).status_code == 403, path
        assert client.get(path, headers=_as(api, "reader")).status_code == 200, path
        assert client.get(path, headers=_as(api, "admin")).status_code == 200, path
    acknowledge = f"/v1/alerts/{alert_id}/acknowledge"
    assert client.post(acknowledge).status_code == 401
    for who in ("features", "reader"):
        denied = client.post(acknowledge, headers=_as(api, who))
        assert denied.status_code == 403, who
        assert "monitors:write" in denied.json()["error"]["message"]
    silence = {"monitor": SCORING, "minutes": 5}
    assert client.post("/v1/silences", json=silence, headers=_as(api, "reader")).status_code == 403
    assert client.delete("/v1/silences/1", headers=_as(api, "reader")).status_code == 403
    assert client.post(acknowledge, headers=_as(api, "oncall")).status_code == 200
    assert client.post(f"/v1/alerts/{alert_id}/resolve",
                       headers=_as(api, "admin")).json()["resolved_by"] == f"admin-{SUFFIX}"


def test_monitors_with_their_latest_run_and_open_alerts(api) -> None:
    _run(api, SCORING)
    latest = _run(api, SCORING, drifted_columns=2, checked_columns=3, dataset_drift=True)
    _run(api, STREAM, status="too_few_rows")  # older than `latest`, another monitor
    _alert(api, SCORING, FEATURES[0])
    _alert(api, SCORING, FEATURES[1], "acknowledged")
    _alert(api, SCORING, "score", "resolved")
    response = api.client.get("/v1/monitors", headers=_as(api, "reader"))
    assert response.status_code == 200, response.text
    monitors = {m["name"]: m for m in response.json()["monitors"]}
    assert list(monitors) == [SCORING, STREAM]
    scoring = monitors[SCORING]
    assert scoring["subject"] == f"service:{SERVICE}"
    assert (scoring["feature_service"], scoring["feature_view"]) == (SERVICE, None)
    assert scoring["features"] == FEATURES and scoring["score"] is True
    assert scoring["window"] == {"rows": 1000, "min_rows": 100}
    assert [r["kind"] for r in scoring["rules"]] == [
        "feature_drift", "drift_share", "monitor_health"  # on by default
    ]
    assert scoring["rules"][0]["consecutive"] == 2
    assert scoring["notify"] == ["hook", "am"]
    assert scoring["open_alerts"] == 2
    run = scoring["latest_run"]
    assert run["run_id"] == latest
    assert (run["dataset_drift"], run["drifted_columns"], run["checked_columns"]) == (True, 2, 3)
    assert run["window_start"] == "2026-03-02T09:00:00+00:00"
    assert run["links"]["self"] == f"/v1/drift-runs/{latest}"
    stream = monitors[STREAM]
    assert stream["latest_run"]["status"] == "too_few_rows"
    assert stream["open_alerts"] == 0
    assert stream["rules"][0] == {"kind": "freshness", "feature_view": VIEW,
                                  "max_age_minutes": 10.0, "severity": "critical"}
    one = api.client.get(f"/v1/monitors/{STREAM}", headers=_as(api, "reader"))
    assert one.json() == stream
    missing = api.client.get("/v1/monitors/nope", headers=_as(api, "reader"))
    assert missing.status_code == 404
    assert "'nope'" in missing.json()["error"]["message"]
    assert SCORING in missing.json()["error"]["message"]


def test_an_invalid_edit_keeps_the_last_valid_file_in_use(api) -> None:
    from monitors.config import CONFIG_VALID

    client, reader, oncall = api.client, _as(api, "reader"), _as(api, "oncall")
    alert_id = _alert(api, SCORING, FEATURES[0])
    assert client.get("/v1/monitors", headers=reader).status_code == 200  # the valid file
    api.config.write_text(MONITORS_YAML.replace("{rows: 1000}", "{rows: 0}"))
    # On-call can still act: the last valid version stays in use, the edit is reported.
    still = client.get("/v1/monitors", headers=reader)
    assert still.status_code == 200
    assert sorted(m["name"] for m in still.json()["monitors"]) == sorted([SCORING, STREAM])
    assert CONFIG_VALID._value.get() == 0
    acknowledged = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=oncall)
    assert acknowledged.status_code == 200, acknowledged.text
    assert [(r.notifier, r.event) for r in _outbox(api, alert_id)] == [("hook", "acknowledge")]
    silence = client.post("/v1/silences", json={"monitor": SCORING, "minutes": 5},
                          headers=oncall)
    assert silence.status_code == 201, silence.text

    api.config.unlink()  # a deleted file is an invalid edit too
    assert client.get("/v1/monitors", headers=reader).json() == {"monitors": []}
    assert client.get(f"/v1/monitors/{SCORING}", headers=reader).status_code == 404
    resolved = client.post(f"/v1/alerts/{alert_id}/resolve", headers=oncall)
    assert resolved.status_code == 200, resolved.text
    # Alerts and runs are read from SQL alone.
    assert client.get("/v1/alerts", headers=reader).status_code == 200
    api.config.write_text(MONITORS_YAML)
    assert client.get("/v1/monitors", headers=reader).status_code == 200
    assert CONFIG_VALID._value.get() == 1


def test_drift_runs_newest_first_in_pages(api) -> None:
    client, reader = api.client, _as(api, "reader")
    scoring = [_run(api, SCORING) for _ in range(7)]
    stream = _run(api, STREAM)
    pages, url = [], f"/v1/drift-runs?monitor={SCORING}&limit=3"
    while url is not None:
        body = client.get(url, headers=reader).json()
        pages.append([run["run_id"] for run in body["runs"]])
        url = body["next"]
    newest_first = scoring[::-1]
    assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    everything = client.get("/v1/drift-runs?limit=500", headers=reader).json()["runs"]
    ids = [run["run_id"] for run in everything]
    assert ids == sorted(ids, reverse=True)
    assert stream in ids and scoring[-1] in ids
    first = client.get("/v1/drift-runs?limit=1", headers=reader).json()
    assert first["next"] == f"/v1/drift-runs?limit=1&before={first['runs'][0]['run_id']}"
    for bad in ("limit=0", "limit=501", "before=x"):
        assert client.get(f"/v1/drift-runs?{bad}", headers=reader).status_code == 422, bad


def test_drift_run_with_its_features_and_report(api) -> None:
    client, reader = api.client, _as(api, "reader")
    html, report = api.tmp / "run.html", {"metrics": [{"metric": "DataDriftTable"}]}
    html.write_text("<html><body>Data Drift Report</body></html>")
    (api.tmp / "run.json").write_bytes(orjson.dumps(report))
    run_id = _run(
        api, SCORING, report_html=str(html), report_json=str(api.tmp / "run.json"),
        multivariate_statistic=0.04, multivariate_p_value=0.005, multivariate_drifted=True,
        features=[(FEATURES[1], "wasserstein", 0.02, 0.1, False),
                  (FEATURES[0], "psi", 0.31, 0.1, True)],
    )
    body = client.get(f"/v1/drift-runs/{run_id}", headers=reader).json()
    assert body["links"] == {
        "self": f"/v1/drift-runs/{run_id}", "report": f"/v1/drift-runs/{run_id}/report",
        "report_json": f"/v1/drift-runs/{run_id}/report.json",
    }
    assert (body["drifted_columns"], body["checked_columns"]) == (1, 2)
    assert body["multivariate"] == {"statistic": 0.04, "p_value": 0.005, "drifted": True}
    assert body["newest_events"] == {VIEW: "2026-03-02T09:14:00+00:00"}
    assert "cursor" not in body and "report_html" not in body  # server internals stay in
    assert body["features"] == [
        {"feature": FEATURES[0], "kind": "num", "method": "psi", "statistic": 0.31,
         "threshold": 0.1, "drifted": True, "reference_rows": 1000, "current_rows": 800,
         "reference_null_rate": 0.0, "current_null_rate": 0.125},
        {"feature": FEATURES[1], "kind": "num", "method": "wasserstein", "statistic": 0.02,
         "threshold": 0.1, "drifted": False, "reference_rows": 1000, "current_rows": 800,
         "reference_null_rate": 0.0, "current_null_rate": 0.125},
    ]
    page = client.get(body["links"]["report"], headers=reader)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == html.read_text()
    assert client.get(body["links"]["report_json"], headers=reader).json() == report
    assert client.get(body["links"]["report"]).status_code == 401

    unknown = client.get("/v1/drift-runs/999999999", headers=reader)
    assert unknown.status_code == 404
    assert "999999999" in unknown.json()["error"]["message"]
    no_report = _run(api, STREAM, status="too_few_rows")
    missing = client.get(f"/v1/drift-runs/{no_report}/report", headers=reader)
    assert missing.status_code == 404
    assert "has no report" in missing.json()["error"]["message"]
    assert "links" in client.get(f"/v1/drift-runs/{no_report}", headers=reader).json()
    html.unlink()
    gone = client.get(f"/v1/drift-runs/{run_id}/report", headers=reader)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "report_gone"
    assert str(api.tmp) not in gone.text  # no server path in the message
    assert client.get(f"/v1/drift-runs/{run_id}/report.json", headers=reader).status_code == 200


def test_alerts_by_status_and_monitor_in_pages(api) -> None:
    client, reader = api.client, _as(api, "reader")
    run_id = _run(api, SCORING)
    triggered = _alert(api, SCORING, FEATURES[0], run_id=run_id)
    acknowledged = _alert(api, SCORING, FEATURES[1], "acknowledged")
    resolved = _alert(api, SCORING, "score", "resolved")
    other = _alert(api, STREAM, VIEW)

    def ids(query: str) -> list[int]:
        response = client.get(f"/v1/alerts?{query}", headers=reader)
        assert response.status_code == 200, response.text
        return [alert["alert_id"] for alert in response.json()["alerts"]]

    assert ids(f"monitor={SCORING}") == [acknowledged, triggered]  # open by default
    assert ids(f"monitor={SCORING}&status=all") == [resolved, acknowledged, triggered]
    assert ids(f"monitor={SCORING}&status=resolved") == [resolved]
    assert ids(f"monitor={SCORING}&status=triggered") == [triggered]
    assert ids(f"monitor={STREAM}&status=all") == [other]
    first = client.get(f"/v1/alerts?monitor={SCORING}&status=all&limit=2",
                       headers=reader).json()
    assert [a["alert_id"] for a in first["alerts"]] == [resolved, acknowledged]
    rest = client.get(first["next"], headers=reader).json()
    assert [a["alert_id"] for a in rest["alerts"]] == [triggered] and rest["next"] is None
    one = client.get(f"/v1/alerts/{triggered}", headers=reader).json()
    assert one["dedup_key"] == f"{SCORING}/feature_drift/{FEATURES[0]}"
    assert one["links"] == {"last_run": f"/v1/drift-runs/{run_id}"}
    assert one["triggered_at"].endswith("+00:00")
    bad = client.get("/v1/alerts?status=closed", headers=reader)
    assert bad.status_code == 422 and "status" in bad.json()["error"]["message"]
    unknown = client.get("/v1/alerts/999999999", headers=reader)
    assert unknown.status_code == 404 and "999999999" in unknown.json()["error"]["message"]


def test_acknowledge_then_resolve_tells_the_notifiers(api) -> None:
    client, oncall = api.client, _as(api, "oncall")
    run_id = _run(api, SCORING)
    alert_id = _alert(api, SCORING, FEATURES[0], run_id=run_id)
    acknowledged = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=oncall)
    assert acknowledged.status_code == 200, acknowledged.text
    alert = acknowledged.json()
    assert (alert["status"], alert["acknowledged_by"]) == ("acknowledged", f"oncall-{SUFFIX}")
    assert alert["acknowledged_at"] is not None
    rows = _outbox(api, alert_id)
    # Alertmanager takes no acknowledge; the webhook does.
    assert [(r.notifier, r.event, r.status) for r in rows] == [("hook", "acknowledge", "pending")]
    sent = rows[0].alert
    assert (sent["alert_id"], sent["status"], sent["run_id"]) == (alert_id, "acknowledged", run_id)
    assert sent["alert_url"] == f"{PUBLIC_URL}/v1/alerts/{alert_id}"
    assert sent["report_url"] == f"{PUBLIC_URL}/v1/drift-runs/{run_id}/report"
    # Twice changes nothing and tells nobody again.
    again = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=oncall)
    assert again.status_code == 200 and again.json()["acknowledged_at"] == alert["acknowledged_at"]
    assert len(_outbox(api, alert_id)) == 1

    resolved = client.post(f"/v1/alerts/{alert_id}/resolve", headers=oncall)
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["resolved_by"]) == (
        "resolved", f"oncall-{SUFFIX}"
    )
    assert sorted((r.notifier, r.event) for r in _outbox(api, alert_id)[1:]) == [
        ("am", "resolve"), ("hook", "resolve")
    ]
    twice = client.post(f"/v1/alerts/{alert_id}/resolve", headers=oncall)
    assert twice.status_code == 409
    assert f"alert {alert_id} was already resolved" in twice.json()["error"]["message"]
    late = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=oncall)
    assert late.status_code == 409
    assert len(_outbox(api, alert_id)) == 3
    open_now = client.get(f"/v1/alerts?monitor={SCORING}", headers=_as(api, "reader")).json()
    assert open_now["alerts"] == []
    unknown = client.post("/v1/alerts/999999999/resolve", headers=oncall)
    assert unknown.status_code == 404 and "999999999" in unknown.json()["error"]["message"]


def test_silences_created_listed_and_ended(api) -> None:
    client, oncall, reader = api.client, _as(api, "oncall"), _as(api, "reader")
    before = datetime.now(UTC)
    created = client.post("/v1/silences", headers=oncall, json={
        "monitor": SCORING, "target": FEATURES[0], "minutes": 30, "comment": "backfill",
    })
    assert created.status_code == 201, created.text
    silence = created.json()
    assert created.headers["location"] == f"/v1/silences/{silence['silence_id']}"
    assert (silence["monitor"], silence["target"], silence["comment"]) == (
        SCORING, FEATURES[0], "backfill"
    )
    assert silence["created_by"] == f"oncall-{SUFFIX}"
    starts = datetime.fromisoformat(silence["starts_at"])
    ends = datetime.fromisoformat(silence["ends_at"])
    assert before <= starts <= datetime.now(UTC)
    assert ends - starts == timedelta(minutes=30)
    later = datetime.now(UTC) + timedelta(days=1)
    scheduled = client.post("/v1/silences", headers=oncall, json={
        "monitor": STREAM, "target": None, "starts_at": later.isoformat(),
        "ends_at": (later + timedelta(hours=2)).isoformat(),
    })
    assert scheduled.status_code == 201, scheduled.text
    for target in ("score", "dataset", FEATURES[1]):  # targets the monitor raises alerts on
        response = client.post("/v1/silences", headers=oncall,
                               json={"monitor": SCORING, "target": target, "minutes": 1})
        assert response.status_code == 201, target

    def listed(query: str = "") -> list[int]:
        body = client.get(f"/v1/silences?{query}", headers=reader).json()
        return [s["silence_id"] for s in body["silences"]
                if s["monitor"] in (SCORING, STREAM)]

    assert silence["silence_id"] in listed()
    assert scheduled.json()["silence_id"] not in listed()  # not yet in force
    assert scheduled.json()["silence_id"] in listed("all=true")
    assert set(listed(f"monitor={STREAM}&all=true")) == {scheduled.json()["silence_id"]}

    ended = client.delete(f"/v1/silences/{silence['silence_id']}", headers=oncall)
    assert ended.status_code == 200
    assert datetime.fromisoformat(ended.json()["ends_at"]) <= datetime.now(UTC)
    assert silence["silence_id"] not in listed()
    assert silence["silence_id"] in listed("all=true")
    unknown = client.delete("/v1/silences/999999999", headers=oncall)
    assert unknown.status_code == 404 and "999999999" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"monitor": "nope", "minutes": 5}, 404, "'nope'"),
        ({"monitor": SCORING, "target": f"{VIEW}:typo", "minutes": 5}, 404, f"{VIEW}:typo"),
        ({"monitor": SCORING, "minutes": 5, "ends_at": "2030-01-01T00:00:00Z"}, 422,
         "exactly one"),
        ({"monitor": SCORING}, 422, "exactly one"),
        ({"monitor": SCORING, "minutes": 0}, 422, "minutes"),
        ({"monitor": SCORING, "ends_at": "2030-01-01T00:00:00"}, 422, "ends_at"),  # no zone
        # Schema-valid, wrong for the data: 400 (422 is a body that breaks the schema).
        ({"monitor": SCORING, "ends_at": "2020-01-01T00:00:00Z"}, 400, "after starts_at"),
        ({"monitor": SCORING, "starts_at": "2030-01-02T00:00:00Z",
          "ends_at": "2030-01-01T00:00:00Z"}, 400, "after starts_at"),
        ({"monitor": SCORING, "minutes": 5, "until": "tomorrow"}, 422, "until"),
        # The edges of the datetime range: in UTC, or after adding the minutes, out of it.
        ({"monitor": SCORING, "starts_at": "9999-12-31T23:59:59Z", "minutes": 60}, 400,
         "starts_at"),
        ({"monitor": SCORING, "ends_at": "9999-12-31T23:59:59-14:00"}, 400, "ends_at"),
        ({"monitor": SCORING, "starts_at": "0001-01-01T00:00:00+14:00",
          "ends_at": "2030-01-01T00:00:00Z"}, 400, "starts_at"),
        # What PostgreSQL cannot store, and what the schema's types do not take.
        ({"monitor": SCORING, "minutes": 5, "comment": "a\u0000b"}, 422, "comment"),
        ({"monitor": SCORING, "minutes": 5, "target": "\ud800"}, 422, "target"),
        ({"monitor": "\u0000", "minutes": 5}, 422, "monitor"),
        ({"monitor": SCORING, "minutes": "60"}, 422, "minutes"),
        ({"monitor": SCORING, "minutes": 5, "starts_at": 0}, 422, "starts_at"),
    ],
)
def test_bad_silence_gets_a_4xx_naming_it(api, body, status, named) -> None:
    # json.dumps escapes a lone surrogate ("\\ud800"), which httpx's own encoder refuses.
    response = api.client.post("/v1/silences", content=json.dumps(body), headers={
        **_as(api, "oncall"), "content-type": "application/json",
    })
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]


@pytest.mark.parametrize("bad_id", ["3000000000", str(2**63), str(2**64), "0", "-1"])
def test_ids_beyond_the_integer_keys_are_a_422_naming_the_id(api, bad_id) -> None:
    client = api.client
    admin = _as(api, "admin")
    requests = [
        ("GET", f"/v1/alerts/{bad_id}", "alert_id"),
        ("POST", f"/v1/alerts/{bad_id}/acknowledge", "alert_id"),
        ("POST", f"/v1/alerts/{bad_id}/resolve", "alert_id"),
        ("GET", f"/v1/drift-runs/{bad_id}", "run_id"),
        ("GET", f"/v1/drift-runs/{bad_id}/report", "run_id"),
        ("GET", f"/v1/drift-runs/{bad_id}/report.json", "run_id"),
        ("DELETE", f"/v1/silences/{bad_id}", "silence_id"),
        ("GET", f"/v1/alerts?before={bad_id}", "before"),
        ("GET", f"/v1/drift-runs?before={bad_id}", "before"),
    ]
    for method, path, named in requests:
        response = client.request(method, path, headers=admin)
        assert response.status_code == 422, (path, response.text)
        assert named in response.json()["error"]["message"], path


@pytest.mark.parametrize("path", [
    "/v1/drift-runs?monitor=%00", "/v1/alerts?monitor=a%00b", "/v1/silences?monitor=%00",
])
def test_nul_in_a_query_string_is_a_422_naming_it(api, path) -> None:
    response = api.client.get(path, headers=_as(api, "reader"))
    assert response.status_code == 422, response.text
    assert "monitor" in response.json()["error"]["message"]


def test_database_down_is_a_prompt_503(api) -> None:
    from featurestore.api.http import install_error_handlers
    from monitors.api import router

    down = api.settings.model_copy(update={
        "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
        "api_auth": "off",
    })
    app = FastAPI()
    app.state.serving = types.SimpleNamespace(verifier=None)  # api_auth: off
    install_error_handlers(app, down.serve_retry_after_seconds)
    app.include_router(router(down))
    with TestClient(app) as client:
        for path in ("/v1/alerts", "/v1/drift-runs/1", f"/v1/monitors/{SCORING}"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "database_unavailable"
        response = client.post("/v1/alerts/1/acknowledge")
        assert response.status_code == 503


def test_openapi_documents_the_monitoring_routes(api) -> None:
    spec = api.client.get("/openapi.json").json()
    routes = {
        ("/v1/monitors", "get"), ("/v1/monitors/{name}", "get"), ("/v1/drift-runs", "get"),
        ("/v1/drift-runs/{run_id}", "get"), ("/v1/drift-runs/{run_id}/report", "get"),
        ("/v1/drift-runs/{run_id}/report.json", "get"), ("/v1/alerts", "get"),
        ("/v1/alerts/{alert_id}", "get"), ("/v1/alerts/{alert_id}/acknowledge", "post"),
        ("/v1/alerts/{alert_id}/resolve", "post"), ("/v1/silences", "get"),
        ("/v1/silences", "post"), ("/v1/silences/{silence_id}", "delete"),
    }
    for path, method in routes:
        operation = spec["paths"][path][method]
        assert operation["tags"] == ["monitoring"], path
        assert operation["summary"], path
        assert "401" in operation["responses"], path
    assert "409" in spec["paths"]["/v1/alerts/{alert_id}/resolve"]["post"]["responses"]
    silence = spec["paths"]["/v1/silences"]["post"]["requestBody"]["content"]
    assert "SilenceRequest" in silence["application/json"]["schema"]["$ref"]

