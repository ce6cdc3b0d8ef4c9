"""The monitoring HTTP API: monitors, drift runs and their reports, alerts, silences.

Reads take the `monitors:read` scope, changes (acknowledge, resolve, silences) `monitors:write`.
Runs, alerts and silences are read from our SQL tables, so any API worker answers for the
monitor worker's writes; the monitors file is read per request (a small YAML file), so an edit
shows without a restart. Its names are checked for shape only here: `featurestore monitors run`
checks them against the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import OperationalError

from featurestore.api.http import ApiError, json_response, scope_checker
from featurestore.api.schemas import (
    ErrorBody,
    IsoDatetime,
    StoredText,
    error_responses,
    exactly_one,
)
from featurestore.apikeys import ApiKey
from featurestore.db import engine
from featurestore.settings import Settings
from monitors import alerts
from monitors.config import (
    SCORE_COLUMN,
    MonitorConfig,
    MonitorConfigError,
    MonitorsFile,
    config_source,
)
from monitors.rules import DATASET, JOINT
from monitors.store import ALERTS, RUN_FEATURES, RUNS

T = TypeVar("T")
# The caller's key (None when api_auth is off) once it proved the scope to change things.
Writer = Annotated[ApiKey | None, Depends(scope_checker("monitors:write"))]
OPEN = "open"  # not resolved: triggered or acknowledged
AlertStatus = Literal["open", "triggered", "acknowledged", "resolved", "all"]
# Run, alert and silence ids are SQL INTEGER keys: a larger id names nothing, and the database
# would refuse to compare it.
ID_MAX = 2**31 - 1
RowId = Annotated[int, PathParam(ge=1, le=ID_MAX)]
Before = Annotated[int | None, Query(ge=1, le=ID_MAX, description="Ids below this one (paging)")]
MonitorName = Annotated[StoredText | None, Query(description="Only this monitor's")]


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


AUTH = {401: _error("Missing, invalid or revoked API key."), 403: _error("The key lacks the scope.")}
UNAVAILABLE = {503: _error("Our SQL database is down; retry after Retry-After.")}
INVALID = error_responses(422)  # a parameter or the body does not match the schema
BAD_CONFIG = {409: _error("The monitors file is missing or invalid (the message names the field).")}


class SilenceRequest(BaseModel):
    """No page for `monitor`'s alerts on `target` (every target when null) for `minutes` from
    `starts_at` (default now), or until `ends_at`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        **exactly_one(("minutes", {"type": "number"}), ("ends_at", {"type": "string"})),
        "examples": [{
            "monitor": "fraud_scoring", "target": "card_transaction_features:card_txn_count_1h",
            "minutes": 60, "comment": "backfill of the card stream until 15:00",
        }],
    })

    monitor: StoredText
    # A feature's definition name, a feature view (freshness), `score`, `dataset` (drift
    # share) or `joint` (multivariate): an alert's `target`.
    target: StoredText | None = None
    # Longer: disable the monitor.
    minutes: float | None = Field(None, gt=0, le=366 * 24 * 60, strict=True)
    starts_at: IsoDatetime | None = None
    ends_at: IsoDatetime | None = None
    comment: StoredText = Field("", max_length=1000)

    @model_validator(mode="after")
    def _one_end(self) -> SilenceRequest:
        if (self.minutes is None) == (self.ends_at is None):
            raise ValueError("set exactly one of minutes or ends_at")
        return self


def _utc(field: str, moment: datetime) -> datetime:
    """`moment` in UTC, which we store; a 400 naming `field` when UTC has no such time (an
    offset pushes 0001-01-01 or 9999-12-31 out of the datetime range)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, "bad_input",
                       f"{field} ({moment.isoformat()}) is outside 0001-01-01T00:00:00Z to "
                       "9999-12-31T23:59:59Z in UTC") from None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes; we only ever store UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _run_links(row) -> dict:
    links = {"self": f"/v1/drift-runs/{row.run_id}"}
    if row.report_html is not None:
        links["report"] = f"/v1/drift-runs/{row.run_id}/report"
    if row.report_json is not None:
        links["report_json"] = f"/v1/drift-runs/{row.run_id}/report.json"
    return links


def _run_summary(row) -> dict:
    return {
        "run_id": row.run_id,
        "monitor": row.monitor,
        "window_start": _iso(row.window_start),
        "window_end": _iso(row.window_end),
        "status": row.status,
        "dataset_drift": row.dataset_drift,
        "drifted_columns": row.drifted_columns,
        "checked_columns": row.checked_columns,
        "created_at": _iso(row.created_at),
        "links": _run_links(row),
    }


def _run(row, features: list) -> dict:
    # Server paths (report files, the capture cursor) stay out: the links reach the reports.
    multivariate = None
    if row.multivariate_statistic is not None:
        multivariate = {"statistic": row.multivariate_statistic,
                        "p_value": row.multivariate_p_value,
                        "drifted": row.multivariate_drifted}
    return {
        **_run_summary(row),
        "baseline_id": row.baseline_id,
        "reference_rows": row.reference_rows,
        "current_rows": row.current_rows,
        "drift_share": row.drift_share,
        "multivariate": multivariate,
        "newest_events": row.newest_events,
        "seconds": row.seconds,
        "features": [
            {"feature": f.feature, "kind": f.kind, "method": f.method, "statistic": f.statistic,
             "threshold": f.threshold, "drifted": f.drifted,
             "reference_rows": f.reference_rows, "current_rows": f.current_rows,
             "reference_null_rate": f.reference_null_rate,
             "current_null_rate": f.current_null_rate}
            for f in features
        ],
    }


def _alert(alert: dict) -> dict:
    if alert["last_run_id"] is not None:
        alert["links"] = {"last_run": f"/v1/drift-runs/{alert['last_run_id']}"}
    return alert


def _monitor(name: str, monitor: MonitorConfig, latest, open_alerts: int) -> dict:
    return {
        "name": name,
        "subject": monitor.subject,
        "feature_service": monitor.feature_service,
        "feature_view": monitor.feature_view,
        "features": monitor.features,
        "score": monitor.score,
        "baseline": monitor.baseline,
        "window": monitor.window.model_dump(exclude_none=True),
        "drift": monitor.drift.model_dump(),
        "rules": [rule.model_dump() for rule in monitor.rules],
        "auto_resolve_after": monitor.auto_resolve_after,
        "notify": monitor.notify,
        "latest_run": _run_summary(latest) if latest is not None else None,
        "open_alerts": open_alerts,
    }


def _next(path: str, rows: list, limit: int, key: str, **params) -> str | None:
    """The next page's link (keyset: ids below the last row's), or None on the last page."""
    if len(rows) <= limit:
        return None
    query = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode({**query, 'limit': limit, 'before': rows[limit - 1][key]})}"


def _silence_targets(monitor: MonitorConfig, catalog) -> set[str] | None:
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
    return targets | {monitor.feature_view} | {f"{view.name}:{f.name}" for f in view.features}


def router(settings: Settings) -> APIRouter:
    routes = APIRouter(tags=["monitoring"])
    reads = [Depends(scope_checker("monitors:read"))]

    async def in_thread(function: Callable[..., T], *args, **kwargs) -> T:
        """Blocking SQL and file reads off the event loop; the database down is a 503."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except OperationalError as exc:
            raise ApiError(
                503, "database_unavailable",
                f"the monitors' database is unavailable: {type(exc.orig).__name__}",
                {"Retry-After": str(settings.serve_retry_after_seconds)},
            ) from None

    def config(missing_ok: bool = False) -> MonitorsFile | None:
        """The version of the monitors file in use, shape checked: reloaded when the file
        changed, the last valid version kept while an edit is invalid (so on-call can still
        acknowledge, resolve and silence). Never valid is the operator's to fix: 409 naming the
        problem (not a 500: nothing is broken in the server; not a 4xx of the request's: the
        same request succeeds once the file is fixed)."""
        path = Path(settings.monitors_config)
        if missing_ok and not path.exists():
            return None
        try:
            return config_source(path).current()
        except MonitorConfigError as exc:
            raise ApiError(409, "monitors_config", str(exc)) from None

    def by(key: ApiKey | None) -> str:
        return key.name if key is not None else "anonymous"  # None: api_auth is off

    # -- monitors -------------------------------------------------------------------------

    def load_monitors_state(names: list[str]) -> tuple[dict, dict]:
        with engine(settings).connect() as conn:
            newest = (
                sa.select(sa.func.max(RUNS.c.run_id))
                .where(RUNS.c.monitor.in_(names)).group_by(RUNS.c.monitor)
            )
            latest = {r.monitor: r for r in conn.execute(
                sa.select(RUNS).where(RUNS.c.run_id.in_(newest))
            )}
            counts = dict(conn.execute(
                sa.select(ALERTS.c.monitor, sa.func.count())
                .where(ALERTS.c.monitor.in_(names), ALERTS.c.status != alerts.RESOLVED)
                .group_by(ALERTS.c.monitor)
            ).all())
        return latest, counts

    async def monitors_of(names: list[str] | None = None) -> list[dict]:
        loaded = await in_thread(config, True)
        if loaded is None:
            return []
        chosen = list(loaded.monitors) if names is None else names
        for name in chosen:
            if name not in loaded.monitors:
                raise ApiError(404, "unknown_name",
                               f"no monitor {name!r}; the monitors file has "
                               f"{sorted(loaded.monitors)}")
        latest, counts = await in_thread(load_monitors_state, chosen)
        return [
            _monitor(name, loaded.monitors[name], latest.get(name), counts.get(name, 0))
            for name in chosen
        ]

    @routes.get(
        "/v1/monitors", dependencies=reads, responses={**AUTH, **BAD_CONFIG, **UNAVAILABLE},
        summary="The monitors of the monitors file, each with its latest run and open alerts",
    )
    async def list_monitors() -> Response:
        return json_response({"monitors": await monitors_of()})

    @routes.get(
        "/v1/monitors/{name}", dependencies=reads,
        responses={**AUTH, 404: _error("No such monitor."), **BAD_CONFIG, **UNAVAILABLE,
                   **INVALID},
        summary="One monitor, its latest run and its count of open alerts",
    )
    async def get_monitor(name: str) -> Response:
        if not Path(settings.monitors_config).exists():
            raise ApiError(404, "unknown_name",
                           f"no monitor {name!r}: there is no monitors file")
        return json_response((await monitors_of([name]))[0])

    # -- drift runs -----------------------------------------------------------------------

    def load_runs(monitor: str | None, limit: int, before: int | None) -> list:
        query = sa.select(RUNS).order_by(RUNS.c.run_id.desc()).limit(limit + 1)
        if monitor is not None:
            query = query.where(RUNS.c.monitor == monitor)
        if before is not None:
            query = query.where(RUNS.c.run_id < before)
        with engine(settings).connect() as conn:
            return conn.execute(query).all()

    def load_run(run_id: int) -> tuple:
        with engine(settings).connect() as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.run_id == run_id)).one_or_none()
            if row is None:
                raise ApiError(404, "unknown_name", f"no drift run with id {run_id}")
            features = conn.execute(
                sa.select(RUN_FEATURES).where(RUN_FEATURES.c.run_id == run_id)
                .order_by(RUN_FEATURES.c.feature)
            ).all()
        return row, features

    @routes.get(
        "/v1/drift-runs", dependencies=reads, responses={**AUTH, **UNAVAILABLE, **INVALID},
        summary="Drift runs, newest first (`next` links the following page)",
    )
    async def list_runs(
        monitor: MonitorName = None,
        limit: int = Query(50, ge=1, le=500),
        before: Before = None,
    ) -> Response:
        rows = await in_thread(load_runs, monitor, limit, before)
        page = [_run_summary(row) for row in rows]
        return json_response({
            "runs": page[:limit],
            "next": _next("/v1/drift-runs", page, limit, "run_id", monitor=monitor),
        })

    @routes.get(
        "/v1/drift-runs/{run_id}", dependencies=reads,
        responses={**AUTH, 404: _error("No such run."), **UNAVAILABLE, **INVALID},
        summary="A drift run with its per-feature tests and links to its report",
    )
    async def get_run(run_id: RowId) -> Response:
        row, features = await in_thread(load_run, run_id)
        return json_response(_run(row, features))

    async def report_file(run_id: int, column: str) -> Path:
        row, _ = await in_thread(load_run, run_id)
        stored = getattr(row, column)
        if stored is None:
            why = ("its window had too few rows to test" if row.status == "too_few_rows"
                   else f"reports are off for monitor {row.monitor!r}")
            raise ApiError(404, "no_report", f"drift run {run_id} has no report: {why}")
        path = Path(stored)
        if not await in_thread(path.is_file):
            raise ApiError(404, "report_gone",
                           f"the report file of drift run {run_id} is gone from the server "
                           "(removed from the reports directory)")
        return path

    @routes.get(
        "/v1/drift-runs/{run_id}/report", dependencies=reads, response_class=FileResponse,
        responses={**AUTH, 404: _error("No such run, no report, or its file is gone."),
                   **UNAVAILABLE, **INVALID},
        summary="The run's Evidently report (HTML)",
    )
    async def report_html(run_id: RowId) -> Response:
        return FileResponse(await report_file(run_id, "report_html"), media_type="text/html")

    @routes.get(
        "/v1/drift-runs/{run_id}/report.json", dependencies=reads, response_class=FileResponse,
        responses={**AUTH, 404: _error("No such run, no report, or its file is gone."),
                   **UNAVAILABLE, **INVALID},
        summary="The run's Evidently report (JSON)",
    )
    async def report_json(run_id: RowId) -> Response:
        path = await report_file(run_id, "report_json")
        return FileResponse(path, media_type="application/json")

    # -- alerts ---------------------------------------------------------------------------

    def load_alerts(status: str, monitor: str | None, limit: int, before: int | None) -> list:
        query = sa.select(ALERTS).order_by(ALERTS.c.alert_id.desc()).limit(limit + 1)
        if status == OPEN:
            query = query.where(ALERTS.c.status != alerts.RESOLVED)
        elif status != "all":
            query = query.where(ALERTS.c.status == status)
        if monitor is not None:
            query = query.where(ALERTS.c.monitor == monitor)
        if before is not None:
            query = query.where(ALERTS.c.alert_id < before)
        with engine(settings).connect() as conn:
            return conn.execute(query).all()

    def load_alert(alert_id: int):
        with engine(settings).connect() as conn:
            row = conn.execute(
                sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id)
            ).one_or_none()
        if row is None:
            raise ApiError(404, "unknown_name", f"no alert with id {alert_id}")
        return row

    @routes.get(
        "/v1/alerts", dependencies=reads, responses={**AUTH, **UNAVAILABLE, **INVALID},
        summary="Alerts, newest first: open ones (triggered or acknowledged) by default",
    )
    async def list_alerts(
        status: AlertStatus = OPEN,
        monitor: MonitorName = None,
        limit: int = Query(50, ge=1, le=500),
        before: Before = None,
    ) -> Response:
        rows = await in_thread(load_alerts, status, monitor, limit, before)
        page = [_alert(alerts.alert_dict(row)) for row in rows]
        return json_response({
            "alerts": page[:limit],
            "next": _next("/v1/alerts", page, limit, "alert_id", status=status, monitor=monitor),
        })

    @routes.get(
        "/v1/alerts/{alert_id}", dependencies=reads,
        responses={**AUTH, 404: _error("No such alert."), **UNAVAILABLE, **INVALID},
        summary="One alert",
    )
    async def get_alert(alert_id: RowId) -> Response:
        return json_response(_alert(alerts.alert_dict(await in_thread(load_alert, alert_id))))

    def change(step, alert_id: int, who: str) -> dict:
        # The notifiers of the alert's monitor are told in the same transaction: without the
        # monitors file nobody would be, so that is a 409 rather than a silent state change.
        loaded = config()
        try:
            return step(engine(settings), loaded, alert_id, who, public_url=settings.public_url)
        except alerts.UnknownAlertError as exc:
            raise ApiError(404, "unknown_name", str(exc)) from None
        except alerts.AlertStateError as exc:
            raise ApiError(409, "alert_state", str(exc)) from None

    transitions = {**AUTH, 404: _error("No such alert."),
                   409: _error("Already resolved, or the monitors file is missing or invalid."),
                   **UNAVAILABLE, **INVALID}

    @routes.post(
        "/v1/alerts/{alert_id}/acknowledge", responses=transitions,
        summary="Acknowledge an open alert (its notifiers are told; twice is harmless)",
    )
    async def acknowledge(alert_id: RowId, key: Writer) -> Response:
        alert = await in_thread(change, alerts.acknowledge, alert_id, by(key))
        return json_response(_alert(alert))

    @routes.post(
        "/v1/alerts/{alert_id}/resolve", responses=transitions,
        summary="Resolve an open alert (its notifiers are told)",
    )
    async def resolve(alert_id: RowId, key: Writer) -> Response:
        alert = await in_thread(change, alerts.resolve, alert_id, by(key))
        return json_response(_alert(alert))

    # -- silences -------------------------------------------------------------------------

    @routes.get(
        "/v1/silences", dependencies=reads, responses={**AUTH, **UNAVAILABLE, **INVALID},
        summary="Silences in force now (all of them with ?all=true)",
    )
    async def list_silences(
        every: bool = Query(False, alias="all", description="Ended and future ones too"),
        monitor: MonitorName = None,
    ) -> Response:
        active_at = None if every else datetime.now(UTC)
        found = await in_thread(
            lambda: alerts.list_silences(engine(settings), active_at=active_at)
        )
        if monitor is not None:
            found = [s for s in found if s["monitor"] == monitor]
        return json_response({"silences": found})

    def create_silence(body: SilenceRequest, who: str, catalog) -> dict:
        loaded = config()
        monitor = loaded.monitors.get(body.monitor)
        if monitor is None:
            raise ApiError(404, "unknown_name",
                           f"no monitor {body.monitor!r}; the monitors file has "
                           f"{sorted(loaded.monitors)}")
        if body.target is not None:
            targets = _silence_targets(monitor, catalog)
            if targets is not None and body.target not in targets:
                raise ApiError(404, "unknown_name",
                               f"monitor {body.monitor!r} raises no alert on target "
                               f"{body.target!r}; its targets: {sorted(targets)}")
        starts_at = _utc("starts_at", body.starts_at) if body.starts_at else datetime.now(UTC)
        if body.ends_at is not None:
            ends_at = _utc("ends_at", body.ends_at)
        else:
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
        return alerts.add_silence(
            engine(settings), monitor=body.monitor, target=body.target,
            starts_at=starts_at, ends_at=ends_at, created_by=who, comment=body.comment,
        )

    @routes.post(
        "/v1/silences", status_code=201,
        responses={**AUTH, 404: _error("No such monitor, or a target it never raises."),
                   400: _error("ends_at not after starts_at, or a time outside the UTC range "
                               "(named)."),
                   409: _error("The monitors file is missing or invalid."),
                   **error_responses(413), **UNAVAILABLE, **INVALID},
        summary="Silence a monitor's alerts (on one target, or all) for a while",
    )
    async def add_silence(
        body: SilenceRequest, request: Request, key: Writer
    ) -> Response:
        catalog = request.app.state.serving.catalog
        silence = await in_thread(create_silence, body, by(key), catalog)
        return json_response(silence, 201,
                             {"Location": f"/v1/silences/{silence['silence_id']}"})

    def end(silence_id: int) -> dict:
        try:
            return alerts.end_silence(engine(settings), silence_id)
        except alerts.UnknownSilenceError as exc:
            raise ApiError(404, "unknown_name", str(exc)) from None

    @routes.delete(
        "/v1/silences/{silence_id}", dependencies=[Depends(scope_checker("monitors:write"))],
        responses={**AUTH, 404: _error("No such silence."), **UNAVAILABLE, **INVALID},
        summary="End a silence now (it stays listed with ?all=true)",
    )
    async def delete_silence(silence_id: RowId) -> Response:
        return json_response(await in_thread(end, silence_id))

    return routes
