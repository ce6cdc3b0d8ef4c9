"""The JSON bodies of the monitoring API: monitors, drift runs, alerts, and paging links."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Row

from featurestore.timestamps import assume_utc
from monitors.config import MonitorConfig


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return assume_utc(value).isoformat()  # SQLite hands back naive datetimes


def _run_links(row: Row) -> dict[str, str]:
    links = {"self": f"/v1/drift-runs/{row.run_id}"}
    if row.report_html is not None:
        links["report"] = f"/v1/drift-runs/{row.run_id}/report"
    if row.report_json is not None:
        links["report_json"] = f"/v1/drift-runs/{row.run_id}/report.json"
    return links


def run_summary(row: Row) -> dict[str, Any]:
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


def _feature(f: Row) -> dict[str, Any]:
    return {"feature": f.feature, "kind": f.kind, "method": f.method, "statistic": f.statistic,
            "threshold": f.threshold, "drifted": f.drifted,
            "reference_rows": f.reference_rows, "current_rows": f.current_rows,
            "reference_null_rate": f.reference_null_rate,
            "current_null_rate": f.current_null_rate}


def run(row: Row, features: Sequence[Row]) -> dict[str, Any]:
    # Server paths (report files, the capture cursor) stay out: the links reach the reports.
    multivariate = None
    if row.multivariate_statistic is not None:
        multivariate = {"statistic": row.multivariate_statistic,
                        "p_value": row.multivariate_p_value,
                        "drifted": row.multivariate_drifted}
    return {
        **run_summary(row),
        "baseline_id": row.baseline_id,
        "reference_rows": row.reference_rows,
        "current_rows": row.current_rows,
        "drift_share": row.drift_share,
        "multivariate": multivariate,
        "newest_events": row.newest_events,
        "seconds": row.seconds,
        "features": [_feature(f) for f in features],
    }


def alert(alert: dict[str, Any]) -> dict[str, Any]:
    if alert["last_run_id"] is not None:
        alert["links"] = {"last_run": f"/v1/drift-runs/{alert['last_run_id']}"}
    return alert


def monitor(name: str, monitor: MonitorConfig, latest: Row | None,
            open_alerts: int) -> dict[str, Any]:
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
        "latest_run": run_summary(latest) if latest is not None else None,
        "open_alerts": open_alerts,
    }


def next_page(path: str, page: list[dict[str, Any]], limit: int, key: str,
              **params: str | None) -> str | None:
    """The next page's link (keyset: ids below the last row's), or None on the last page;
    `page` holds up to one row more than `limit`."""
    if len(page) <= limit:
        return None
    query = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode({**query, 'limit': limit, 'before': page[limit - 1][key]})}"
