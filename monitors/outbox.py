"""The durable outbox: a notification waits in SQL until its notifier took it.

`enqueue` writes one row per notifier that takes the event, inside the transaction that changed
the alert, so a crash loses neither. `Outbox.serve` (the worker's delivery thread) and
`Outbox.deliver_due` (one pass, for `--once` and tests) send what is due, oldest first:
- per notifier and dedup key (the page key) only the oldest pending row goes, so a resolve never
  overtakes its trigger (a failed row stops blocking: the rows after it still go);
- each notifier has a lane: at most `concurrency` requests in flight, started at most
  `max_per_second` apart, paused by a Retry-After; each request, answer included, ends within
  `deadline_seconds` (`monitors.notifiers.send`), so a receiver that hangs or drips holds only
  its own lane, for that long;
- a retryable failure waits `base * 2^failures` seconds (capped, jittered) or the notifier's
  Retry-After; a non-retryable one, or failures beyond `give_up_after`, fail the row and log an
  ERROR naming the notifier, the alert and the reason;
- before sending, a row is leased (its next attempt moved a deadline plus a margin ahead) and the
  lease is renewed while it waits for its lane or is sent, so two deliverers on one database do
  not both send it; a deliverer that dies mid-send leaves the row to be sent again when the lease
  ends, and an answer after the deadline is retried: at least once, the receivers dedupe
  (PagerDuty by dedup key, Alertmanager by labels, webhooks by Idempotency-Key / Webhook-Id;
  Slack cannot: a rare second post).
Every bit of delivery state is in the row, so a restarted worker carries on where the last one
stopped. Secrets are read at send time (`monitors.notifiers`) and never stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import Counter
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from featurestore.timestamps import to_utc
from monitors.notifiers import (
    DeliveryError,
    HttpRequest,
    NotifierConfig,
    accepts,
    build_request,
    send,
)
from monitors.sql import outbox as outbox_sql
from monitors.sql.outbox import PENDING

log = logging.getLogger("monitors.outbox")

DELIVERED, FAILED = "delivered", "failed"  # row statuses, with PENDING
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


def _forget(tasks: dict[int, asyncio.Task], message_id: int, _: asyncio.Task) -> None:
    tasks.pop(message_id, None)


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
    now = to_utc(now)
    rows = [
        {
            "alert_id": alert_id, "dedup_key": dedup_key, "notifier": name,
            "event": notification["event"], "alert": notification, "status": PENDING,
            "attempts": 0, "next_attempt_at": now, "created_at": now,
        }
        for name, config in notifiers.items()
        if accepts(config, notification["event"])
    ]
    outbox_sql.insert_messages(conn, rows)
    return len(rows)


class _Lane:
    """One notifier's share of delivery: at most `concurrency` rows in flight, request starts
    at least 1/max_per_second apart (its rate limit), none while it asked us to wait."""

    def __init__(self, config: NotifierConfig | None) -> None:
        self.config = config
        self.concurrency = config.concurrency if config is not None else 1
        self.interval = 1 / config.max_per_second if config is not None else 0.0
        self.in_flight = 0
        self._next_start = 0.0
        self._paused_until = 0.0

    def has_room(self) -> bool:
        return (self.in_flight < self.concurrency
                and asyncio.get_running_loop().time() >= self._paused_until)

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._next_start)
        self._next_start = start + self.interval
        await asyncio.sleep(start - loop.time())

    def hold_off(self, seconds: float) -> None:
        """A Retry-After: the notifier's other rows wait too."""
        self._paused_until = max(self._paused_until,
                                 asyncio.get_running_loop().time() + seconds)


class Outbox:
    """Delivers the outbox's due rows to the notifiers of the monitors file in use (`notifiers`:
    the mapping, or a function returning the current one, read again at each pass)."""

    def __init__(
        self,
        engine: Engine,
        notifiers: dict[str, NotifierConfig] | Callable[[], dict[str, NotifierConfig]],
        *,
        deadline_seconds: float = 10.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 300.0,
        give_up_after: timedelta = timedelta(hours=24),
        batch: int = 100,
        lease_margin_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self._notifiers = notifiers if callable(notifiers) else lambda: notifiers
        self.deadline_seconds = deadline_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.give_up_after = give_up_after
        self.batch = batch
        # A send takes deadline_seconds at most, and the lease is renewed while a row waits for
        # its notifier's rate limit or is being sent: a short lease, so a deliverer that died
        # holds its rows back briefly, and a live one never loses its rows to another.
        self._lease = timedelta(seconds=deadline_seconds + lease_margin_seconds)
        self._random = random.Random()
        self._lanes: dict[str, _Lane] = {}
        self._counts_lock = threading.Lock()
        self._counts = dict.fromkeys((DELIVERED, RETRIED, FAILED), 0)

    # -- the two ways to run it -----------------------------------------------------------

    def deliver_due(self, now: datetime | None = None) -> DeliveryCounts:
        """Send every row due at `now` (default: the clock; a fixed `now` runs on from there),
        each at most once per call, and return when all are done (`monitors run --once`)."""
        before = self.counts()
        asyncio.run(self._drain(to_utc(now) if now is not None else None))
        after = self.counts()
        return DeliveryCounts(after.delivered - before.delivered, after.retried - before.retried,
                              after.failed - before.failed)

    def serve(self, stop: threading.Event, tick_seconds: float = 0.5) -> None:
        """Deliver until `stop` is set (the worker's delivery thread): due rows are picked up
        every `tick_seconds` and sent concurrently, so a notifier that hangs holds only its own
        lane, each of its requests for `deadline_seconds` at most."""
        asyncio.run(self._serve(stop, tick_seconds))

    def counts(self) -> DeliveryCounts:
        """Outcomes since this outbox was made."""
        with self._counts_lock:
            return DeliveryCounts(self._counts[DELIVERED], self._counts[RETRIED],
                                  self._counts[FAILED])

    async def _drain(self, fixed: datetime | None) -> None:
        def clock() -> datetime:
            return fixed or datetime.now(UTC)

        self._lanes = {}  # pauses and rate limits run on the real clock: fresh for each call
        tried: set[int] = set()
        tasks: dict[int, asyncio.Task] = {}
        async with self._client() as client:
            while True:
                # A delivered row lets the next row of its key go: query again until nothing new.
                rows = [r for r in await asyncio.to_thread(self._due, clock(), self._full())
                        if r.message_id not in tried]
                launched = self._launch(client, rows, tasks, clock)
                tried.update(launched)
                if not tasks:
                    return
                await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)

    async def _serve(self, stop: threading.Event, tick_seconds: float) -> None:
        tasks: dict[int, asyncio.Task] = {}
        database_away = False
        async with self._client() as client:
            while not stop.is_set():
                try:
                    rows = await asyncio.to_thread(self._due, datetime.now(UTC), self._full())
                except SQLAlchemyError as exc:
                    if not database_away:  # the messages wait in the database; once is news
                        log.warning("cannot read the outbox, retrying: %s", exc)
                    database_away = True
                else:
                    database_away = False
                    self._launch(client, rows, tasks, lambda: datetime.now(UTC))
                await asyncio.sleep(tick_seconds)
            if tasks:  # those in flight finish (each within its deadline) before the end
                await asyncio.wait(tasks.values())

    def _client(self) -> httpx.AsyncClient:
        # The deadline bounds each request's total time; httpx's timeouts bound each phase.
        return httpx.AsyncClient(timeout=self.deadline_seconds, follow_redirects=False)

    def _launch(self, client: httpx.AsyncClient, rows: list[Row],
                tasks: dict[int, asyncio.Task], clock: Callable[[], datetime]) -> list[int]:
        """Start a delivery for each row not in flight whose notifier's lane has room."""
        configs = self._notifiers()
        launched = []
        for row in rows:
            if row.message_id in tasks:
                continue
            lane = self._lane(row.notifier, configs.get(row.notifier))
            if not lane.has_room():
                continue  # its turn comes in a later pass
            lane.in_flight += 1
            task = asyncio.create_task(self._deliver(client, lane, row, configs, clock))
            tasks[row.message_id] = task
            task.add_done_callback(functools.partial(_forget, tasks, row.message_id))
            launched.append(row.message_id)
        return launched

    def _full(self) -> list[str]:
        """Notifiers whose lane takes nothing now: their rows are left out of the query, so a
        notifier that hangs with a backlog never crowds the others out of the batch."""
        return [name for name, lane in self._lanes.items() if not lane.has_room()]

    def _lane(self, name: str, config: NotifierConfig | None) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None or lane.config != config:  # new, or its settings changed on reload
            lane = self._lanes[name] = _Lane(config)
        return lane

    # -- one row --------------------------------------------------------------------------

    async def _deliver(self, client: httpx.AsyncClient, lane: _Lane, row,
                       configs: dict[str, NotifierConfig],
                       clock: Callable[[], datetime]) -> None:
        try:
            await self._deliver_row(client, lane, row, configs, clock)
        finally:
            lane.in_flight -= 1

    async def _deliver_row(self, client: httpx.AsyncClient, lane: _Lane, row,
                           configs: dict[str, NotifierConfig],
                           clock: Callable[[], datetime]) -> None:
        try:
            lease_end = await asyncio.to_thread(self._claim, row, clock())
            if lease_end is None:
                return
            renewal = asyncio.create_task(self._renew(row, lease_end, clock))
            try:
                outcome, values = await self._attempt(client, lane, row, configs, clock)
            finally:
                renewal.cancel()
            await asyncio.to_thread(self._update, row, **values)
        except SQLAlchemyError as exc:
            # The database went away mid-delivery: the row stays pending and is sent again
            # once its lease ends (at least once).
            log.warning("notification %d to %s: cannot record the attempt: %s", row.message_id,
                        row.notifier, exc)
            return
        with self._counts_lock:
            self._counts[outcome] += 1
        NOTIFICATIONS.labels(row.notifier, outcome).inc()

    async def _attempt(self, client, lane: _Lane, row, configs,
                       clock: Callable[[], datetime]) -> tuple[str, dict]:
        try:
            request = self._request(row, configs)
            await lane.turn()
            await send(client, request, self.deadline_seconds)
        except DeliveryError as error:
            if error.retry_after is not None:
                lane.hold_off(error.retry_after)
            return self._failed_attempt(row, error, clock())
        log.info("notification %d (%s) of alert %d delivered to %s", row.message_id, row.event,
                 row.alert_id, row.notifier)
        return DELIVERED, {"status": DELIVERED, "attempts": row.attempts + 1,
                           "delivered_at": clock(), "last_error": None}

    async def _renew(self, row, lease_end: datetime, clock: Callable[[], datetime]) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                renewed = await asyncio.to_thread(self._extend, row, lease_end, clock())
            except SQLAlchemyError:
                continue  # the database is away: nobody else can claim the row either
            if renewed is None:
                return  # the attempt was recorded meanwhile
            lease_end = renewed

    def _extend(self, row: Row, lease_end: datetime, now: datetime) -> datetime | None:
        """Move our lease on; None when the row no longer holds it (a renewal that comes after
        the attempt was recorded must not undo its backoff)."""
        renewed = now + self._lease
        return renewed if outbox_sql.extend(self.engine, row.message_id, lease_end, renewed) else None

    def _due(self, now: datetime, skip: list[str]) -> list[Row]:
        return outbox_sql.due(self.engine, now, skip, self.batch)

    def _claim(self, row: Row, now: datetime) -> datetime | None:
        """Lease `row` for one send: the lease's end, or None when another deliverer has it."""
        lease_end = now + self._lease
        return lease_end if outbox_sql.claim(self.engine, row.message_id, now, lease_end) else None

    def _update(self, row: Row, **values) -> None:
        outbox_sql.update_message(self.engine, row.message_id, **values)

    def _request(self, row, configs: dict[str, NotifierConfig]) -> HttpRequest:
        config = configs.get(row.notifier)
        if config is None:
            # Retryable: the monitors file in use may be older than the edit that queued it
            # (an invalid edit is not loaded); it waits for the file, up to give_up_after.
            raise DeliveryError(
                f"notifier {row.notifier} is not in the monitors file in use", retryable=True
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

    def _failed_attempt(self, row, error: DeliveryError, now: datetime) -> tuple[str, dict]:
        attempts = row.attempts + 1
        age = now - to_utc(row.created_at)
        if error.retryable and age < self.give_up_after:
            delay = self._delay(row.attempts, error.retry_after)
            log.warning(
                "notification %d (%s) of alert %d to %s: attempt %d failed, next in %.0f s: %s",
                row.message_id, row.event, row.alert_id, row.notifier, attempts,
                delay.total_seconds(), error.message,
            )
            return RETRIED, {"attempts": attempts, "next_attempt_at": now + delay,
                             "last_error": error.message[:_ERROR_CHARS]}
        reason = error.message
        if error.retryable:
            reason = f"gave up after {attempts} attempts over {age}: {reason}"
        log.error(
            "notification %d (%s) of alert %d (%s) to notifier %s failed: %s", row.message_id,
            row.event, row.alert_id, row.dedup_key, row.notifier, reason,
        )
        return FAILED, {"status": FAILED, "attempts": attempts,
                        "last_error": reason[:_ERROR_CHARS]}

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
