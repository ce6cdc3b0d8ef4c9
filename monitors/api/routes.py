"""The monitoring API's route handlers, and `router(settings)` that serves them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy.engine import Engine, Row

from featurestore.api.http import ApiError, json_response
from featurestore.api.schemas import error_responses
from featurestore.settings import Settings
from monitors import alerts
from monitors.api import bodies
from monitors.api.context import READS, WRITES, Context, Monitoring, Writer, bind, who
from monitors.api.schemas import (
    AUTH,
    BAD_CONFIG,
    INVALID,
    NO_REPORT,
    OPEN,
    TRANSITIONS,
    UNAVAILABLE,
    AlertStatus,
    Before,
    MonitorName,
    RowId,
    SilenceRequest,
    documented,
    error,
)
from monitors.config import SCORE_COLUMN, MonitorConfig, MonitorsFile
from monitors.rules import DATASET, JOINT
from monitors.sql import alerts as alert_sql
from monitors.sql import runs as run_sql

PAGE = Query(50, ge=1, le=500)

# -- monitors ---------------------------------------------------------------------------------


def _monitors_state(monitoring: Monitoring, names: list[str]) -> tuple[dict[str, Row],
                                                                         dict[str, int]]:
    with monitoring.engine.connect() as conn:
        return run_sql.latest_runs(conn, names), alert_sql.open_alert_counts(conn, names)


def _unknown_monitor(name: str, config: MonitorsFile) -> ApiError:
    return ApiError(404, "unknown_name",
                    f"no monitor {name!r}; the monitors file has {sorted(config.monitors)}")


async def _monitors_of(monitoring: Monitoring, names: list[str] | None = None) -> list[dict]:
    loaded = await monitoring.in_thread(monitoring.config_if_any)
    if loaded is None:
        return []
    chosen = list(loaded.monitors) if names is None else names
    for name in chosen:
        if name not in loaded.monitors:
            raise _unknown_monitor(name, loaded)
    latest, counts = await monitoring.in_thread(_monitors_state, monitoring, chosen)
    return [
        bodies.monitor(name, loaded.monitors[name], latest.get(name), counts.get(name, 0))
        for name in chosen
    ]


async def list_monitors(monitoring: Context) -> Response:
    return json_response({"monitors": await _monitors_of(monitoring)})


async def get_monitor(name: str, monitoring: Context) -> Response:
    if not monitoring.config_path.exists():
        raise ApiError(404, "unknown_name", f"no monitor {name!r}: there is no monitors file")
    return json_response((await _monitors_of(monitoring, [name]))[0])


# -- drift runs -------------------------------------------------------------------------------


def _runs(engine: Engine, monitor: str | None, limit: int, before: int | None) -> list[Row]:
    with engine.connect() as conn:
        return list(run_sql.page_of_runs(conn, monitor, limit, before))


def _run(engine: Engine, run_id: int) -> tuple[Row, list[Row]]:
    with engine.connect() as conn:
        found = run_sql.run_with_features(conn, run_id)
    if found is None:
        raise ApiError(404, "unknown_name", f"no drift run with id {run_id}")
    row, features = found
    return row, list(features)


async def list_runs(monitoring: Context, monitor: MonitorName = None, limit: int = PAGE,
                    before: Before = None) -> Response:
    rows = await monitoring.in_thread(_runs, monitoring.engine, monitor, limit + 1, before)
    page = [bodies.run_summary(row) for row in rows]
    return json_response({
        "runs": page[:limit],
        "next": bodies.next_page("/v1/drift-runs", page, limit, "run_id", monitor=monitor),
    })


async def get_run(run_id: RowId, monitoring: Context) -> Response:
    row, features = await monitoring.in_thread(_run, monitoring.engine, run_id)
    return json_response(bodies.run(row, features))


async def _report_file(monitoring: Monitoring, run_id: int, column: str) -> Path:
    row, _ = await monitoring.in_thread(_run, monitoring.engine, run_id)
    stored = getattr(row, column)
    if stored is None:
        why = ("its window had too few rows to test" if row.status == "too_few_rows"
               else f"reports are off for monitor {row.monitor!r}")
        raise ApiError(404, "no_report", f"drift run {run_id} has no report: {why}")
    path = Path(stored)
    if not await monitoring.in_thread(path.is_file):
        raise ApiError(404, "report_gone",
                       f"the report file of drift run {run_id} is gone from the server "
                       "(removed from the reports directory)")
    return path


async def report_html(run_id: RowId, monitoring: Context) -> Response:
    path = await _report_file(monitoring, run_id, "report_html")
    return FileResponse(path, media_type="text/html")


async def report_json(run_id: RowId, monitoring: Context) -> Response:
    path = await _report_file(monitoring, run_id, "report_json")
    return FileResponse(path, media_type="application/json")


# -- alerts -----------------------------------------------------------------------------------


def _alerts(engine: Engine, status: str, monitor: str | None, limit: int,
            before: int | None) -> list[dict]:
    with engine.connect() as conn:
        return alert_sql.page_of_alerts(conn, status, monitor, limit, before)


def _alert(engine: Engine, alert_id: int) -> dict:
    with engine.connect() as conn:
        alert = alert_sql.get_alert(conn, alert_id)
    if alert is None:
        raise ApiError(404, "unknown_name", f"no alert with id {alert_id}")
    return alert


async def list_alerts(monitoring: Context, status: AlertStatus = OPEN,
                      monitor: MonitorName = None, limit: int = PAGE,
                      before: Before = None) -> Response:
    found = await monitoring.in_thread(_alerts, monitoring.engine, status, monitor, limit + 1,
                                       before)
    page = [bodies.alert(alert) for alert in found]
    return json_response({
        "alerts": page[:limit],
        "next": bodies.next_page("/v1/alerts", page, limit, "alert_id", status=status,
                                 monitor=monitor),
    })


async def get_alert(alert_id: RowId, monitoring: Context) -> Response:
    return json_response(bodies.alert(await monitoring.in_thread(
        _alert, monitoring.engine, alert_id)))


Transition = Callable[..., dict[str, Any]]  # alerts.acknowledge or alerts.resolve


def _change(monitoring: Monitoring, step: Transition, alert_id: int, by: str) -> dict:
    # The notifiers of the alert's monitor are told in the same transaction: without the
    # monitors file nobody would be, so that is a 409 rather than a silent state change.
    loaded = monitoring.config()
    try:
        return step(monitoring.engine, loaded, alert_id, by,
                    public_url=monitoring.settings.public_url)
    except alerts.UnknownAlertError as exc:
        raise ApiError(404, "unknown_name", str(exc)) from None
    except alerts.AlertStateError as exc:
        raise ApiError(409, "alert_state", str(exc)) from None


async def acknowledge(alert_id: RowId, key: Writer, monitoring: Context) -> Response:
    alert = await monitoring.in_thread(_change, monitoring, alerts.acknowledge, alert_id,
                                       who(key))
    return json_response(bodies.alert(alert))


async def resolve(alert_id: RowId, key: Writer, monitoring: Context) -> Response:
    alert = await monitoring.in_thread(_change, monitoring, alerts.resolve, alert_id, who(key))
    return json_response(bodies.alert(alert))


# -- silences ---------------------------------------------------------------------------------


async def list_silences(
    monitoring: Context,
    every: bool = Query(False, alias="all", description="Ended and future ones too"),
    monitor: MonitorName = None,
) -> Response:
    active_at = None if every else datetime.now(UTC)
    found = await monitoring.in_thread(alert_sql.silences, monitoring.engine, active_at)
    if monitor is not None:
        found = [s for s in found if s["monitor"] == monitor]
    return json_response({"silences": found})


def _silence_targets(monitor: MonitorConfig, catalog: Any) -> set[str] | None:
    """The alert targets `monitor` can raise, or None when the registry does not know its
    subject (then any target is taken)."""
    targets = {DATASET, JOINT, SCORE_COLUMN, alerts.HEALTH_TARGET}
    targets |= {rule.feature_view for rule in monitor.rules if rule.kind == "freshness"}
    if monitor.features:
        return targets | set(monitor.features)
    if monitor.feature_service is not None:
        service = catalog.services.get(monitor.feature_service)
        if service is None:
            return None
        return targets | {
            f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features
        }
    view = catalog.views.get(monitor.feature_view)
    if view is None:
        return None
    return targets | {view.name} | {f"{view.name}:{f.name}" for f in view.features}


def _utc(field: str, moment: datetime) -> datetime:
    """`moment` in UTC, which we store; a 400 naming `field` when UTC has no such time (an
    offset pushes 0001-01-01 or 9999-12-31 out of the datetime range)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, "bad_input",
                       f"{field} ({moment.isoformat()}) is outside 0001-01-01T00:00:00Z to "
                       "9999-12-31T23:59:59Z in UTC") from None


def _silence_period(body: SilenceRequest) -> tuple[datetime, datetime]:
    """When the silence starts and ends, in UTC; a 400 when it ends before it starts."""
    starts_at = _utc("starts_at", body.starts_at) if body.starts_at else datetime.now(UTC)
    if body.ends_at is not None:
        ends_at = _utc("ends_at", body.ends_at)
    else:
        assert body.minutes is not None  # SilenceRequest holds exactly one of them
        try:
            ends_at = starts_at + timedelta(minutes=body.minutes)
        except OverflowError:
            raise ApiError(400, "bad_input",
                           f"starts_at ({starts_at.isoformat()}) + {body.minutes} minutes "
                           "is after 9999-12-31T23:59:59Z") from None
    if ends_at <= starts_at:
        raise ApiError(400, "bad_input",
                       f"ends_at ({ends_at.isoformat()}) must be after starts_at "
                       f"({starts_at.isoformat()})")
    return starts_at, ends_at


def _create_silence(monitoring: Monitoring, body: SilenceRequest, by: str,
                    catalog: Any) -> dict:
    loaded = monitoring.config()
    monitor = loaded.monitors.get(body.monitor)
    if monitor is None:
        raise _unknown_monitor(body.monitor, loaded)
    if body.target is not None:
        targets = _silence_targets(monitor, catalog)
        if targets is not None and body.target not in targets:
            raise ApiError(404, "unknown_name",
                           f"monitor {body.monitor!r} raises no alert on target "
                           f"{body.target!r}; its targets: {sorted(targets)}")
    starts_at, ends_at = _silence_period(body)
    return alerts.add_silence(
        monitoring.engine, monitor=body.monitor, target=body.target,
        starts_at=starts_at, ends_at=ends_at, created_by=by, comment=body.comment,
    )


async def add_silence(body: SilenceRequest, request: Request, key: Writer,
                      monitoring: Context) -> Response:
    catalog = request.app.state.serving.catalog
    silence = await monitoring.in_thread(_create_silence, monitoring, body, who(key), catalog)
    return json_response(silence, 201, {"Location": f"/v1/silences/{silence['silence_id']}"})


def _end(engine: Engine, silence_id: int) -> dict:
    try:
        return alerts.end_silence(engine, silence_id)
    except alerts.UnknownSilenceError as exc:
        raise ApiError(404, "unknown_name", str(exc)) from None


async def delete_silence(silence_id: RowId, monitoring: Context) -> Response:
    return json_response(await monitoring.in_thread(_end, monitoring.engine, silence_id))


def router(settings: Settings) -> APIRouter:
    """The monitoring routes, answering from `settings`' database and monitors file."""
    routes = APIRouter(tags=["monitoring"], dependencies=[Depends(bind(Monitoring(settings)))])
    get, post = routes.get, routes.post
    get("/v1/monitors", dependencies=READS,
        responses=documented(AUTH, BAD_CONFIG, UNAVAILABLE),
        summary="The monitors of the monitors file, each with its latest run and open alerts",
        )(list_monitors)
    get("/v1/monitors/{name}", dependencies=READS,
        responses=documented(AUTH, {404: error("No such monitor.")}, BAD_CONFIG, UNAVAILABLE,
                             INVALID),
        summary="One monitor, its latest run and its count of open alerts")(get_monitor)
    get("/v1/drift-runs", dependencies=READS, responses=documented(AUTH, UNAVAILABLE, INVALID),
        summary="Drift runs, newest first (`next` links the following page)")(list_runs)
    get("/v1/drift-runs/{run_id}", dependencies=READS,
        responses=documented(AUTH, {404: error("No such run.")}, UNAVAILABLE, INVALID),
        summary="A drift run with its per-feature tests and links to its report")(get_run)
    get("/v1/drift-runs/{run_id}/report", dependencies=READS, response_class=FileResponse,
        responses=documented(AUTH, NO_REPORT, UNAVAILABLE, INVALID),
        summary="The run's Evidently report (HTML)")(report_html)
    get("/v1/drift-runs/{run_id}/report.json", dependencies=READS, response_class=FileResponse,
        responses=documented(AUTH, NO_REPORT, UNAVAILABLE, INVALID),
        summary="The run's Evidently report (JSON)")(report_json)
    get("/v1/alerts", dependencies=READS, responses=documented(AUTH, UNAVAILABLE, INVALID),
        summary="Alerts, newest first: open ones (triggered or acknowledged) by default",
        )(list_alerts)
    get("/v1/alerts/{alert_id}", dependencies=READS,
        responses=documented(AUTH, {404: error("No such alert.")}, UNAVAILABLE, INVALID),
        summary="One alert")(get_alert)
    post("/v1/alerts/{alert_id}/acknowledge", responses=TRANSITIONS,
         summary="Acknowledge an open alert (its notifiers are told; twice is harmless)",
         )(acknowledge)
    post("/v1/alerts/{alert_id}/resolve", responses=TRANSITIONS,
         summary="Resolve an open alert (its notifiers are told)")(resolve)
    get("/v1/silences", dependencies=READS, responses=documented(AUTH, UNAVAILABLE, INVALID),
        summary="Silences in force now (all of them with ?all=true)")(list_silences)
    post("/v1/silences", status_code=201,
         responses=documented(
             AUTH, {404: error("No such monitor, or a target it never raises."),
                    400: error("ends_at not after starts_at, or a time outside the UTC range "
                               "(named)."),
                    409: error("The monitors file is missing or invalid.")},
             error_responses(413), UNAVAILABLE, INVALID),
         summary="Silence a monitor's alerts (on one target, or all) for a while")(add_silence)
    routes.delete("/v1/silences/{silence_id}", dependencies=WRITES,
                  responses=documented(AUTH, {404: error("No such silence.")}, UNAVAILABLE,
                                       INVALID),
                  summary="End a silence now (it stays listed with ?all=true)")(delete_silence)
    return routes
