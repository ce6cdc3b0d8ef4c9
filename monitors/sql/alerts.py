"""Alerts and silences, as JSON-able dicts (times in ISO 8601 UTC)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from featurestore.timestamps import assume_utc
from monitors.sql import inserted_id
from monitors.store import ALERTS, SILENCES

RESOLVED = "resolved"  # the status of a closed alert; any other is open


def _iso(value: datetime | None) -> str | None:
    return assume_utc(value).isoformat() if value is not None else None


def alert_dict(row: Row) -> dict:
    """An ALERTS row as JSON-able values."""
    # Column names come back as SQLAlchemy's str subclass, which orjson refuses as keys.
    alert = {str(name): value for name, value in row._mapping.items()}
    for name in ("triggered_at", "last_fired_at", "acknowledged_at", "resolved_at"):
        alert[name] = _iso(alert[name])
    return alert


def silence_dict(row: Row) -> dict:
    silence = {str(name): value for name, value in row._mapping.items()}
    for name in ("starts_at", "ends_at", "created_at"):
        silence[name] = _iso(silence[name])
    return silence


def open_alerts(conn: Connection, monitor: str) -> dict[str, dict]:
    """The monitor's open alerts by dedup key."""
    rows = conn.execute(
        sa.select(ALERTS).where(ALERTS.c.monitor == monitor, ALERTS.c.status != RESOLVED)
    )
    return {row.dedup_key: alert_dict(row) for row in rows}


def open_alert_counts(conn: Connection, monitors: list[str]) -> dict[str, int]:
    """Monitor -> how many open alerts it has, for those of `monitors` that have any."""
    return {monitor: count for monitor, count in conn.execute(
        sa.select(ALERTS.c.monitor, sa.func.count())
        .where(ALERTS.c.monitor.in_(monitors), ALERTS.c.status != RESOLVED)
        .group_by(ALERTS.c.monitor)
    ).all()}


def page_members(conn: Connection, page_key: str) -> list[dict]:
    """The alerts that went out in page `page_key`, oldest first."""
    rows = conn.execute(
        sa.select(ALERTS).where(ALERTS.c.page_key == page_key).order_by(ALERTS.c.alert_id)
    )
    return [alert_dict(row) for row in rows]


def _one(conn: Connection, alert_id: int) -> dict:
    return alert_dict(conn.execute(sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id)).one())


def insert_alert(conn: Connection, **values: Any) -> dict:
    """Store a new alert (ALERTS' columns but alert_id); returns it as stored."""
    alert_id = inserted_id(conn.execute(sa.insert(ALERTS).values(**values)))
    return _one(conn, alert_id)


def update_alert(conn: Connection, alert_id: int, **values: Any) -> dict:
    """Change the alert's `values`; returns it as stored."""
    conn.execute(sa.update(ALERTS).where(ALERTS.c.alert_id == alert_id).values(**values))
    return _one(conn, alert_id)


def alert_for_update(conn: Connection, alert_id: int) -> dict | None:
    """Alert `alert_id`, locked until the caller's transaction ends; None when there is none."""
    row = conn.execute(
        sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id).with_for_update()
    ).one_or_none()
    return alert_dict(row) if row is not None else None


def get_alert(conn: Connection, alert_id: int) -> dict | None:
    row = conn.execute(sa.select(ALERTS).where(ALERTS.c.alert_id == alert_id)).one_or_none()
    return alert_dict(row) if row is not None else None


def page_of_alerts(conn: Connection, statuses: str, monitor: str | None, limit: int,
                   before: int | None) -> list[dict]:
    """Up to `limit` alerts, newest first: `statuses` is a status, `open` (not resolved) or
    `all`; of `monitor` and with ids below `before` when given."""
    query = sa.select(ALERTS).order_by(ALERTS.c.alert_id.desc()).limit(limit)
    if statuses == "open":
        query = query.where(ALERTS.c.status != RESOLVED)
    elif statuses != "all":
        query = query.where(ALERTS.c.status == statuses)
    if monitor is not None:
        query = query.where(ALERTS.c.monitor == monitor)
    if before is not None:
        query = query.where(ALERTS.c.alert_id < before)
    return [alert_dict(row) for row in conn.execute(query)]


def silenced(conn: Connection, monitor: str, target: str, now: datetime) -> bool:
    """Whether a silence of the monitor (on `target`, or on all its targets) is in force."""
    query = sa.select(sa.func.count()).select_from(SILENCES).where(
        SILENCES.c.monitor == monitor,
        sa.or_(SILENCES.c.target.is_(None), SILENCES.c.target == target),
        SILENCES.c.starts_at <= now,
        SILENCES.c.ends_at > now,
    )
    return conn.execute(query).scalar_one() > 0


def _silence(conn: Connection, silence_id: int) -> Row | None:
    return conn.execute(
        sa.select(SILENCES).where(SILENCES.c.silence_id == silence_id)
    ).one_or_none()


def _stored_silence(conn: Connection, silence_id: int) -> dict:
    return silence_dict(conn.execute(
        sa.select(SILENCES).where(SILENCES.c.silence_id == silence_id)
    ).one())


def insert_silence(engine: Engine, **values: Any) -> dict:
    """Store a silence (SILENCES' columns but silence_id); returns it as stored."""
    with engine.begin() as conn:
        silence_id = inserted_id(conn.execute(sa.insert(SILENCES).values(**values)))
        return _stored_silence(conn, silence_id)


def end_silence(engine: Engine, silence_id: int, now: datetime) -> dict | None:
    """Silence `silence_id` ends at `now` unless it ended before; returns it as stored, None when
    there is no such silence."""
    with engine.begin() as conn:
        row = _silence(conn, silence_id)
        if row is None:
            return None
        conn.execute(sa.update(SILENCES).where(SILENCES.c.silence_id == silence_id).values(
            ends_at=min(assume_utc(row.ends_at), now)
        ))
        return _stored_silence(conn, silence_id)


def silences(engine: Engine, active_at: datetime | None) -> list[dict]:
    """Every silence by id, or those in force at `active_at` when given."""
    query = sa.select(SILENCES).order_by(SILENCES.c.silence_id)
    if active_at is not None:
        query = query.where(SILENCES.c.starts_at <= active_at, SILENCES.c.ends_at > active_at)
    with engine.connect() as conn:
        return [silence_dict(row) for row in conn.execute(query)]
