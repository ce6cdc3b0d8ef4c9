"""The notification queue: one row per notification and notifier, delivered in order per
notifier and page (`dedup_key`), leased by the deliverer that sends it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from monitors.store import OUTBOX

PENDING = "pending"


def insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Queue `rows` (OUTBOX' columns but message_id) in the caller's transaction."""
    if rows:
        conn.execute(sa.insert(OUTBOX), rows)


def due(engine: Engine, now: datetime, skip: list[str], limit: int) -> list[Row]:
    """Up to `limit` pending messages due by `now`, oldest first, but those of the notifiers in
    `skip` and those behind an older pending message of their notifier and page."""
    older = OUTBOX.alias("older")
    blocked = sa.exists().where(
        older.c.status == PENDING,
        older.c.notifier == OUTBOX.c.notifier,
        older.c.dedup_key == OUTBOX.c.dedup_key,
        older.c.message_id < OUTBOX.c.message_id,
    )
    query = (
        sa.select(OUTBOX)
        .where(OUTBOX.c.status == PENDING, OUTBOX.c.next_attempt_at <= now, ~blocked,
               OUTBOX.c.notifier.not_in(skip))
        .order_by(OUTBOX.c.message_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def _lease(engine: Engine, message_id: int, held: sa.ColumnElement[bool],
           lease_end: datetime) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(OUTBOX)
            .where(OUTBOX.c.message_id == message_id, OUTBOX.c.status == PENDING, held)
            .values(next_attempt_at=lease_end)
        )
    return result.rowcount == 1


def claim(engine: Engine, message_id: int, now: datetime, lease_end: datetime) -> bool:
    """Lease the pending message until `lease_end` if it is due by `now` (no other deliverer
    holds it); whether we got it."""
    return _lease(engine, message_id, OUTBOX.c.next_attempt_at <= now, lease_end)


def extend(engine: Engine, message_id: int, lease_end: datetime, renewed: datetime) -> bool:
    """Move our lease ending at `lease_end` on to `renewed`; False when the message no longer
    holds it (its attempt was recorded)."""
    return _lease(engine, message_id, OUTBOX.c.next_attempt_at == lease_end, renewed)


def update_message(engine: Engine, message_id: int, **values: Any) -> None:
    """Record an attempt's outcome (OUTBOX' columns)."""
    with engine.begin() as conn:
        conn.execute(sa.update(OUTBOX).where(OUTBOX.c.message_id == message_id).values(**values))
