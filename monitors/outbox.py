"""The durable outbox: a notification waits in SQL until its notifier took it.

`enqueue` writes one row per notifier that takes the event, inside the transaction that changed
the alert, so a crash loses neither. `Outbox.deliver_due` sends what is due, oldest first:
- per notifier and dedup key only the oldest pending row goes, so a resolve never overtakes its
  trigger (a failed row stops blocking: the rows after it still go);
- a retryable failure waits `base * 2^failures` seconds (capped, jittered) or the notifier's
  Retry-After; a non-retryable one, or failures beyond `give_up_after`, fail the row and log an
  ERROR naming the notifier, the alert and the reason;
- before sending, a row is leased (its next attempt moved past the send's worst case), so two
  deliverers on one database do not both send it; a deliverer that dies mid-send leaves the row
  to be sent again when the lease ends: at least once, and the receivers dedupe (PagerDuty by
  dedup key, Alertmanager by labels, webhooks by Idempotency-Key).
Every bit of delivery state is in the row, so a restarted worker carries on where the last one
stopped. Secrets are read at send time (`monitors.notifiers`) and never stored.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.engine import Connection, Engine

from monitors.notifiers import (
    DeliveryError,
    HttpRequest,
    NotifierConfig,
    accepts,
    build_request,
    send,
)
from monitors.store import OUTBOX

log = logging.getLogger("monitors.outbox")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"  # row statuses
RETRIED = "retried"  # the outcome of an attempt that will be repeated
_ERROR_CHARS = 2000  # OUTBOX.last_error's size
_MAX_DOUBLINGS = 32  # past this the cap applies anyway; keeps 2^n a small number

NOTIFICATIONS = Counter(
    "featurestore_monitor_notifications",
    "Outbox delivery attempts by notifier and outcome (delivered, retried, failed).",
    ["notifier", "outcome"],
)


@dataclass(frozen=True)
class DeliveryCounts:
    delivered: int = 0
    retried: int = 0
    failed: int = 0


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; we only ever store UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enqueue(
    conn: Connection,
    *,
    alert_id: int,
    dedup_key: str,
    notifiers: dict[str, NotifierConfig],
    notification: dict,
    now: datetime,
) -> int:
    """Queue `notification` for each notifier that takes its event, in the caller's
    transaction; returns how many rows were written."""
    now = _utc(now)
    rows = [
        {
            "alert_id": alert_id, "dedup_key": dedup_key, "notifier": name,
            "event": notification["event"], "alert": notification, "status": PENDING,
            "attempts": 0, "next_attempt_at": now, "created_at": now,
        }
        for name, config in notifiers.items()
        if accepts(config, notification["event"])
    ]
    if rows:
        conn.execute(sa.insert(OUTBOX), rows)
    return len(rows)


class Outbox:
    """Delivers the outbox's due rows to the notifiers of the monitors file."""

    def __init__(
        self,
        engine: Engine,
        notifiers: dict[str, NotifierConfig],
        *,
        timeout_seconds: float = 10.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 300.0,
        give_up_after: timedelta = timedelta(hours=24),
        batch: int = 100,
    ) -> None:
        self.engine = engine
        self.notifiers = notifiers
        self.timeout_seconds = timeout_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.give_up_after = give_up_after
        self.batch = batch
        # The lease outlasts the longest send: httpx's timeout bounds each phase (connect,
        # write, read, pool wait), not the whole.
        self._lease = timedelta(seconds=4 * timeout_seconds + 30)
        self._random = random.Random()

    def deliver_due(self, now: datetime | None = None) -> DeliveryCounts:
        """Send every row due at `now` (default: the clock), each at most once per call."""
        now = _utc(now or datetime.now(UTC))
        outcomes = dict.fromkeys((DELIVERED, RETRIED, FAILED), 0)
        tried: set[int] = set()
        client: httpx.Client | None = None
        try:
            # A delivered row lets the next row of its key go: query again until nothing new.
            while due := [row for row in self._due(now) if row.message_id not in tried]:
                client = client or httpx.Client(timeout=self.timeout_seconds)
                for row in due:
                    tried.add(row.message_id)
                    outcome = self._deliver(client, row, now)
                    if outcome is not None:
                        outcomes[outcome] += 1
                        NOTIFICATIONS.labels(row.notifier, outcome).inc()
        finally:
            if client is not None:
                client.close()
        return DeliveryCounts(outcomes[DELIVERED], outcomes[RETRIED], outcomes[FAILED])

    def _due(self, now: datetime) -> list[sa.Row]:
        older = OUTBOX.alias("older")
        blocked = sa.exists().where(
            older.c.status == PENDING,
            older.c.notifier == OUTBOX.c.notifier,
            older.c.dedup_key == OUTBOX.c.dedup_key,
            older.c.message_id < OUTBOX.c.message_id,
        )
        query = (
            sa.select(OUTBOX)
            .where(OUTBOX.c.status == PENDING, OUTBOX.c.next_attempt_at <= now, ~blocked)
            .order_by(OUTBOX.c.message_id)
            .limit(self.batch)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def _claim(self, row, now: datetime) -> bool:
        """Lease `row` for one send; False when another deliverer has it already."""
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(OUTBOX)
                .where(
                    OUTBOX.c.message_id == row.message_id,
                    OUTBOX.c.status == PENDING,
                    OUTBOX.c.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + self._lease)
            )
            return result.rowcount == 1

    def _update(self, row, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(OUTBOX).where(OUTBOX.c.message_id == row.message_id).values(**values)
            )

    def _deliver(self, client: httpx.Client, row, now: datetime) -> str | None:
        if not self._claim(row, now):
            return None
        try:
            send(client, self._request(row))
        except DeliveryError as error:
            return self._failed_attempt(row, error, now)
        self._update(row, status=DELIVERED, attempts=row.attempts + 1, delivered_at=now,
                     last_error=None)
        log.info("notification %d (%s) of alert %d delivered to %s", row.message_id, row.event,
                 row.alert_id, row.notifier)
        return DELIVERED

    def _request(self, row) -> HttpRequest:
        config = self.notifiers.get(row.notifier)
        if config is None:
            raise DeliveryError(
                f"notifier {row.notifier} is no longer in the monitors file", retryable=False
            )
        try:
            request = build_request(row.notifier, config, row.alert)
        except (KeyError, TypeError, ValueError) as exc:
            # A row written by another version of this code must not block the outbox forever.
            raise DeliveryError(
                f"the stored {row.event} notification cannot be sent to {row.notifier}: "
                f"{type(exc).__name__}: {exc}",
                retryable=False,
            ) from None
        if request is None:
            raise DeliveryError(
                f"notifier {row.notifier} (type {config.type}) does not take {row.event} "
                "events; the monitors file changed since it was queued",
                retryable=False,
            )
        return request

    def _failed_attempt(self, row, error: DeliveryError, now: datetime) -> str:
        attempts = row.attempts + 1
        age = now - _utc(row.created_at)
        if error.retryable and age < self.give_up_after:
            delay = self._delay(row.attempts, error.retry_after)
            self._update(row, attempts=attempts, next_attempt_at=now + delay,
                         last_error=error.message[:_ERROR_CHARS])
            log.warning(
                "notification %d (%s) of alert %d to %s: attempt %d failed, next in %.0f s: %s",
                row.message_id, row.event, row.alert_id, row.notifier, attempts,
                delay.total_seconds(), error.message,
            )
            return RETRIED
        reason = error.message
        if error.retryable:
            reason = f"gave up after {attempts} attempts over {age}: {reason}"
        self._update(row, status=FAILED, attempts=attempts, last_error=reason[:_ERROR_CHARS])
        log.error(
            "notification %d (%s) of alert %d (%s) to notifier %s failed: %s", row.message_id,
            row.event, row.alert_id, row.dedup_key, row.notifier, reason,
        )
        return FAILED

    def _delay(self, failures: int, retry_after: float | None) -> timedelta:
        if retry_after is not None:
            # The notifier knows best, but waiting past give_up_after would only end in failure.
            return min(timedelta(seconds=retry_after), self.give_up_after)
        nominal = min(
            self.backoff_base_seconds * 2 ** min(failures, _MAX_DOUBLINGS),
            self.backoff_max_seconds,
        )
        # Half fixed, half random: never much sooner than the schedule, and deliverers that
        # failed together do not all come back in the same second.
        return timedelta(seconds=nominal * self._random.uniform(0.5, 1.0))
