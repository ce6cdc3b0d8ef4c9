"""The alert lifecycle in SQL: trigger -> acknowledge -> resolve, dedup, silences, notifications.

One alert per dedup key (`monitor/rule/target`) is open at a time. After each window
(`apply_window`, inside the transaction that stores the run):
- a condition that fires with no open alert of its key opens one and pages (a `trigger` per
  notifier of the monitor) unless a silence covers it; firing again keeps the same alert (no new
  page; Alertmanager, which forgets alerts not re-sent, gets a `refire`);
- an open alert whose rule was judged and did not fire counts a clean window; after the monitor's
  `auto_resolve_after` clean windows it resolves itself (`resolve` sent);
- an alert opened under a silence pages when it fires after the silence ended.
People acknowledge and resolve through the API (`acknowledge`, `resolve`). Notifications go to the
outbox in the same transaction as the state change, so a crash loses neither.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from featurestore.errors import FeatureStoreError
from monitors.config import MonitorConfig, MonitorsFile
from monitors.outbox import enqueue
from monitors.rules import Evaluation
from monitors.store import ALERTS, SILENCES

TRIGGERED, ACKNOWLEDGED, RESOLVED = "triggered", "acknowledged", "resolved"


class AlertError(FeatureStoreError):
    """An alert or silence request that cannot be honoured."""


class UnknownAlertError(AlertError):
    """No alert with that id."""


class UnknownSilenceError(AlertError):
    """No silence with that id."""


class AlertStateError(AlertError):
    """The alert is not in a state that allows the request (resolving a resolved alert)."""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def alert_dict(row) -> dict:
    """An ALERTS row as JSON-able values."""
    # Column names come back as SQLAlchemy's str subclass, which orjson refuses as keys.
    alert = {str(name): value for name, value in row._mapping.items()}
    for name in ("triggered_at", "last_fired_at", "acknowledged_at", "resolved_at"):
        alert[name] = _iso(alert[name])
    return alert


def silence_dict(row) -> dict:
    silence = {str(name): value for name, value in row._mapping.items()}
    for name in ("starts_at", "ends_at", "created_at"):
        silence[name] = _iso(silence[name])
    return silence


def _notification(alert: dict, event: str, at: datetime, public_url: str) -> dict:
    run_id = alert["last_run_id"]
    base = public_url.rstrip("/")
    return {
        "event": event,
        "alert_id": alert["alert_id"],
        "dedup_key": alert["dedup_key"],
        "monitor": alert["monitor"],
        "rule": alert["rule"],
        "target": alert["target"],
        "severity": alert["severity"],
        "status": alert["status"],
        "summary": alert["summary"],
        "details": alert["details"],
        "triggered_at": alert["triggered_at"],
        "at": at.isoformat(),
        "run_id": run_id,
        "report_url": f"{base}/v1/drift-runs/{run_id}/report" if run_id is not None else None,
        "alert_url": f"{base}/v1/alerts/{alert['alert_id']}",
        "source": f"featurestore monitor {alert['monitor']}",
    }


def _notify(
    conn: Connection, config: MonitorsFile, alert: dict, event: str, at: datetime, public_url: str
) -> None:
    monitor = config.monitors.get(alert["monitor"])
    names = monitor.notify if monitor is not None else []
    enqueue(
        conn,
        alert_id=alert["alert_id"],
        dedup_key=alert["dedup_key"],
        notifiers={name: config.notifiers[name] for name in names},
        notification=_notification(alert, event, at, public_url),
        now=at,
    )


def _silenced(conn: Connection, monitor: str, target: str, now: datetime) -> bool:
    query = sa.select(sa.func.count()).select_from(SILENCES).where(
        SILENCES.c.monitor == monitor,
        sa.or_(SILENCES.c.target.is_(None), SILENCES.c.target == target),
        SILENCES.c.starts_at <= now,
        SILENCES.c.ends_at > now,
    )
    return conn.execute(query).scalar_one() > 0


def _open_alerts(conn: Connection, monitor: str) -> dict[str, dict]:
    rows = conn.execute(
        sa.select(ALERTS).where(ALERTS.c.monitor == monitor, ALERTS.c.status != RESOLVED)
    )
    return {row.dedup_key: alert_dict(row) for row in rows}


def _update(conn: Connection, alert_id: int, **values) -> dict:
    conn.execute(sa.update(ALERTS).where(ALERTS.c.alert_id == alert_id).values(**values))
    return alert_dict(conn.execute(sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id)).one())


def apply_window(
    conn: Connection,
    config: MonitorsFile,
    name: str,
    run_id: int,
    evaluation: Evaluation,
    *,
    now: datetime,
    public_url: str,
) -> list[dict]:
    """Move the monitor's alerts on after run `run_id`; returns the alerts it opened or changed."""
    monitor: MonitorConfig = config.monitors[name]
    open_alerts = _open_alerts(conn, name)
    changed = []
    for fired in evaluation.firing:
        key = fired.dedup_key(name)
        silenced = _silenced(conn, name, fired.target, now)
        current = open_alerts.pop(key, None)
        fields = {"severity": fired.severity, "summary": fired.summary, "details": fired.details,
                  "last_run_id": run_id, "last_fired_at": now, "clean_windows": 0}
        if current is None:
            alert_id = conn.execute(sa.insert(ALERTS).values(
                dedup_key=key, monitor=name, rule=fired.rule, target=fired.target,
                status=TRIGGERED, first_run_id=run_id, silenced=silenced, triggered_at=now,
                **fields,
            )).inserted_primary_key[0]
            alert = alert_dict(
                conn.execute(sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id)).one()
            )
            if not silenced:
                _notify(conn, config, alert, "trigger", now, public_url)
        elif current["silenced"] and not silenced:
            # Opened under a silence that has ended while the condition still holds: page now.
            alert = _update(conn, current["alert_id"], silenced=False, **fields)
            _notify(conn, config, alert, "trigger", now, public_url)
        else:
            alert = _update(conn, current["alert_id"], **fields)
            if not alert["silenced"]:
                _notify(conn, config, alert, "refire", now, public_url)
        changed.append(alert)
    for alert in open_alerts.values():
        if alert["rule"] not in evaluation.judged:
            continue
        clean = alert["clean_windows"] + 1
        if clean < monitor.auto_resolve_after:
            changed.append(_update(conn, alert["alert_id"], clean_windows=clean))
            continue
        resolved = _update(conn, alert["alert_id"], clean_windows=clean, status=RESOLVED,
                           resolved_at=now, resolved_by="auto")
        if not resolved["silenced"]:
            _notify(conn, config, resolved, "resolve", now, public_url)
        changed.append(resolved)
    return changed


def _get(conn: Connection, alert_id: int) -> dict:
    row = conn.execute(
        sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownAlertError(f"no alert with id {alert_id}")
    return alert_dict(row)


def acknowledge(
    engine: Engine, config: MonitorsFile, alert_id: int, by: str, *, public_url: str,
    now: datetime | None = None,
) -> dict:
    """Someone is on it: the pages stop escalating. Acknowledging twice changes nothing."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        alert = _get(conn, alert_id)
        if alert["status"] == RESOLVED:
            raise AlertStateError(f"alert {alert_id} is already resolved")
        if alert["status"] == ACKNOWLEDGED:
            return alert
        alert = _update(conn, alert_id, status=ACKNOWLEDGED, acknowledged_at=now,
                        acknowledged_by=by)
        if not alert["silenced"]:
            _notify(conn, config, alert, "acknowledge", now, public_url)
        return alert


def resolve(
    engine: Engine, config: MonitorsFile, alert_id: int, by: str, *, public_url: str,
    now: datetime | None = None,
) -> dict:
    """Closed by a person. If the condition still holds, the next window opens a new alert."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        alert = _get(conn, alert_id)
        if alert["status"] == RESOLVED:
            raise AlertStateError(
                f"alert {alert_id} was already resolved by {alert['resolved_by']} at "
                f"{alert['resolved_at']}"
            )
        alert = _update(conn, alert_id, status=RESOLVED, resolved_at=now, resolved_by=by)
        if not alert["silenced"]:
            _notify(conn, config, alert, "resolve", now, public_url)
        return alert


def add_silence(
    engine: Engine, *, monitor: str, target: str | None, starts_at: datetime, ends_at: datetime,
    created_by: str, comment: str,
) -> dict:
    """No page for the monitor's alerts on `target` (every target when None) in the interval."""
    if ends_at <= starts_at:
        raise AlertError(f"a silence must end after it starts ({starts_at} .. {ends_at})")
    with engine.begin() as conn:
        silence_id = conn.execute(sa.insert(SILENCES).values(
            monitor=monitor, target=target, starts_at=starts_at, ends_at=ends_at,
            created_by=created_by, comment=comment, created_at=datetime.now(UTC),
        )).inserted_primary_key[0]
        row = conn.execute(sa.select(SILENCES).where(SILENCES.c.silence_id == silence_id)).one()
        return silence_dict(row)


def end_silence(engine: Engine, silence_id: int, *, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(SILENCES).where(SILENCES.c.silence_id == silence_id)
        ).one_or_none()
        if row is None:
            raise UnknownSilenceError(f"no silence with id {silence_id}")
        ends_at = row.ends_at if row.ends_at.tzinfo else row.ends_at.replace(tzinfo=UTC)
        conn.execute(sa.update(SILENCES).where(SILENCES.c.silence_id == silence_id).values(
            ends_at=min(ends_at, now)
        ))
        row = conn.execute(sa.select(SILENCES).where(SILENCES.c.silence_id == silence_id)).one()
        return silence_dict(row)


def list_silences(engine: Engine, *, active_at: datetime | None = None) -> list[dict]:
    query = sa.select(SILENCES).order_by(SILENCES.c.silence_id)
    if active_at is not None:
        query = query.where(SILENCES.c.starts_at <= active_at, SILENCES.c.ends_at > active_at)
    with engine.connect() as conn:
        return [silence_dict(row) for row in conn.execute(query)]
