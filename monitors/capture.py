"""The capture log: a sample of the feature rows the API serves and the stream worker writes, in a
Kafka topic (`settings.capture_topic`), read back by the monitor worker as windows.

Producer side (`CaptureLog`, one per API worker process and per stream worker): each offered row
is kept with probability `settings.capture_rate`. The caller pays for the draw and a copy of the
kept values, nothing more: a background thread connects to Kafka (retrying while the broker is
away), creates the topic, encodes and sends. At most `settings.capture_buffer_bytes` wait for the
broker; what does not fit is dropped and counted, never waited for, and nothing raises into the
request or the write being sampled.

One message (key = subject, value = orjson):
    {"subject": "service:NAME" | "view:NAME", "captured_at": epoch ms,
     "columns": [...], "rows": [[...], ...], "newest_events": {view: epoch ms}}
Offers of one subject and columns drained together (every `_DRAIN_SECONDS`) within the same
second of capture time become one message, so a message never straddles a window boundary of
whole seconds.

Reader side (`CaptureReader`): assigns every partition of the topic itself (no consumer group,
no commits: the caller keeps the cursor in SQL with each run), keeps the messages of one subject
and cuts them into count or time windows; a message is never split, so a window's cursor is exact.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from featurestore.settings import Settings

if TYPE_CHECKING:
    from monitors.config import WindowConfig

log = logging.getLogger("featurestore.capture")

DROP_REASONS = ("buffer_full", "send_failed", "closed", "error")
# Capture time may run this far behind the log: an offer waits up to `_DRAIN_SECONDS` for the
# sender thread, then the producer's linger and a retry or two, and API hosts' clocks differ by
# a little. A time window with no newer message closes by the clock only this long after its end,
# so messages stamped before the end still join it.
GRACE_SECONDS = 10.0

_DRAIN_SECONDS = 0.05  # the sender wakes this often; a request never wakes a thread itself
_MAX_MESSAGE_BYTES = 512 * 1024  # below Kafka's default 1 MB message limit
_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 30.0
_DROP_LOG_SECONDS = 60.0
_FEW_ROWS = 16
# What a waiting offer holds, roughly: its lists, and the values it keeps alive after the
# response is gone (a reference and a float object each). Encoded messages count their exact size.
_OFFER_BYTES, _ROW_BYTES, _VALUE_BYTES = 256, 64, 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_metrics: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Metrics:
    sent: Counter
    dropped: Counter
    malformed: Counter


def _metrics_in(registry: CollectorRegistry) -> _Metrics:
    """The capture counters of `registry` (the API's default registry, or the stream worker's).
    Feast puts prometheus_client in multiprocess mode, where the API's /metrics sums processes."""
    if registry not in _metrics:
        _metrics[registry] = _Metrics(
            Counter("featurestore_capture_rows_sent",
                    "Sampled rows the broker acknowledged, per subject.", ["subject"],
                    registry=registry),
            Counter("featurestore_capture_rows_dropped",
                    "Sampled rows not captured, per subject and reason.", ["subject", "reason"],
                    registry=registry),
            Counter("featurestore_capture_malformed_messages",
                    "Capture messages the reader skipped as malformed, per subject.",
                    ["subject"], registry=registry),
        )
    return _metrics[registry]


def _epoch_ms(value: Any) -> int:
    """Epoch milliseconds of an int (already ms), a datetime (naive = UTC) or an ISO string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MS
    return int(value)


def _datetime(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _newest_ms(times: Sequence | pa.Array | pa.ChunkedArray) -> int | None:
    if isinstance(times, pa.Array | pa.ChunkedArray):
        newest = pc.max(times).as_py()
    else:
        # ISO strings of one lookup share their format, so the greatest string is the newest.
        present = [t for t in times if t is not None]
        newest = max(present) if present else None
    return None if newest is None else _epoch_ms(newest)


@dataclass
class _Offer:
    subject: str
    columns: tuple[str, ...]
    rows: Sequence[Sequence] | pa.Table  # the kept rows (a table: the stream worker's)
    times: Mapping[str, Sequence | pa.Array | pa.ChunkedArray]  # view -> kept rows' event times
    captured_ms: int
    count: int
    size: int


@dataclass
class _Message:
    subject: str
    value: bytes
    captured_ms: int
    rows: int


class CaptureLog:
    """Samples rows into the capture topic; `offer*` never blocks and never raises."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        registry: CollectorRegistry | None = None,
        seed: int | None = None,
    ) -> None:
        self.rate = settings.capture_rate
        self.topic = settings.capture_topic
        self.client_id = client_id
        self.bootstrap = settings.kafka_bootstrap_servers
        self.limit = settings.capture_buffer_bytes
        # One generator per process (seed None: from the OS), so API workers sample independently.
        self._random = random.Random(seed)
        self._rng = np.random.default_rng(seed)
        self._metrics = _metrics_in(registry if registry is not None else REGISTRY)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: list[_Offer] = []
        self._held = 0  # bytes: waiting offers (estimated) + unacknowledged messages (exact)
        self._closed = False
        self._close_by = 0.0
        self._wake = threading.Event()
        self._counts_lock = threading.Lock()
        self.sent: dict[str, int] = {}  # subject -> rows acknowledged
        # id -> message handed to the producer and not yet acknowledged or failed; what is left
        # when `close` runs out of time is counted dropped there, and its late callback ignored.
        self._in_flight: dict[int, _Message] = {}
        self.dropped: dict[tuple[str, str], int] = {}  # (subject, reason) -> rows
        self._drop_logged: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        if self.rate > 0:
            self._thread = threading.Thread(
                target=self._run, name=f"capture-{client_id}", daemon=True
            )
            self._thread.start()

    # --- the caller's side: sample, copy the kept values, queue ---------------------------

    def sample(self, count: int) -> Sequence[int] | None:
        """Indexes of the rows to keep of `count`, each kept with probability `capture_rate`
        (one binomial draw, then that many distinct indexes); None when none is kept."""
        rate = self.rate
        if count <= 0 or self._closed or not rate:
            return None
        if rate >= 1.0:
            return range(count)
        if count == 1:
            return (0,) if self._random.random() < rate else None
        kept = int(self._rng.binomial(count, rate))
        if kept == 0:
            return None
        if kept == count:
            return range(count)
        if kept <= _FEW_ROWS:
            return self._random.sample(range(count), kept)
        return self._rng.permutation(count)[:kept].tolist()  # C speed once many are kept

    def offer_columns(
        self,
        subject: str,
        columns: Sequence[str],
        values: Sequence[Sequence],
        event_times: Mapping[str, Sequence] | None = None,
        *,
        picks: Sequence[int] | None = None,
    ) -> None:
        """Column-major rows (`values[column][row]`, as a lookup returns them); `event_times`:
        per feature view, each row's event time (ISO string, datetime or epoch ms; None = none),
        reduced to the newest among the kept rows. `picks`: rows already drawn with `sample`
        (a caller that must assemble `values` first draws before it does)."""
        if self._closed or not self.rate:
            return
        try:
            if picks is None:
                picks = self.sample(len(values[0]) if values else 0)
                if picks is None:
                    return
            event_times = event_times or {}
            if isinstance(picks, range):
                rows = list(zip(*values))
                times = event_times
            elif len(picks) == 1:
                at = picks[0]
                rows = [[column[at] for column in values]]
                times = {view: [stamps[at]] for view, stamps in event_times.items()}
            else:
                get = itemgetter(*picks)
                rows = list(zip(*map(get, values)))
                times = {view: get(stamps) for view, stamps in event_times.items()}
            self._queue_offer(subject, columns, rows, times, len(rows))
        except Exception:  # sampling must never fail the request or the write
            self._drop(subject, "error", 0)
            log.exception("capture log: cannot sample an offer of %s", subject)

    def offer_table(
        self,
        subject: str,
        table: pa.Table,
        columns: Sequence[str],
        event_time_columns: Mapping[str, str] | None = None,
    ) -> None:
        """The rows of an Arrow table (`columns` of it); `event_time_columns`: per view, the
        table's event-time column."""
        if self._closed or not self.rate:
            return
        try:
            picks = self.sample(table.num_rows)
            if picks is None:
                return
            if not isinstance(picks, range):
                table = table.take(pa.array(picks, pa.int64()))
            times = {view: table.column(name) for view, name in (event_time_columns or {}).items()}
            self._queue_offer(subject, columns, table.select(list(columns)), times, table.num_rows)
        except Exception:  # as in offer_columns
            self._drop(subject, "error", 0)
            log.exception("capture log: cannot sample an offer of %s", subject)

    def _queue_offer(self, subject, columns, rows, times, count: int) -> None:
        size = _OFFER_BYTES + count * (_ROW_BYTES + len(columns) * _VALUE_BYTES)
        offer = _Offer(subject, tuple(columns), rows, times, int(time.time() * 1000), count, size)
        with self._lock:
            fits = self._held + size <= self.limit
            if fits:
                self._held += size
                self._queue.append(offer)
        if not fits:
            self._drop(subject, "buffer_full", count)

    # --- counters ------------------------------------------------------------------------

    def _drop(self, subject: str, reason: str, rows: int) -> None:
        self._metrics.dropped.labels(subject, reason).inc(rows)
        with self._counts_lock:
            self.dropped[(subject, reason)] = self.dropped.get((subject, reason), 0) + rows
            now, last = time.monotonic(), self._drop_logged.get(reason)
            if rows and (last is None or now - last >= _DROP_LOG_SECONDS):
                self._drop_logged[reason] = now
                log.warning("capture log: dropping sampled rows (%s; %d of %s so far)",
                            reason, self.dropped[(subject, reason)], subject)

    def _release(self, message: _Message) -> None:
        with self._lock:
            self._held -= len(message.value)
            if self._held <= 0 and not self._queue:
                self._idle.notify_all()

    def _settled(self, message: _Message) -> bool:
        """Whether `message` was still in flight (else `close` already counted it)."""
        with self._counts_lock:
            return self._in_flight.pop(id(message), None) is not None

    def _acked(self, message: _Message, _metadata) -> None:
        if not self._settled(message):
            return
        self._release(message)
        self._metrics.sent.labels(message.subject).inc(message.rows)
        with self._counts_lock:
            self.sent[message.subject] = self.sent.get(message.subject, 0) + message.rows

    def _failed(self, message: _Message, exc: Exception) -> None:
        if not self._settled(message):
            return
        self._release(message)
        self._drop(message.subject, "send_failed", message.rows)
        log.debug("capture log: a send failed: %s", exc)

    @property
    def held_bytes(self) -> int:
        return self._held

    # --- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        producer: KafkaProducer | None = None
        delay, retry_at = _FIRST_BACKOFF_SECONDS, 0.0
        while True:
            closing = self._closed
            try:
                # Closing with rows waiting still makes one attempt, if one is due.
                due = time.monotonic() >= retry_at and (not closing or self._queue)
                if producer is None and due:
                    producer = self._connect(delay)
                    if producer is None:
                        retry_at = time.monotonic() + delay
                        delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
                    else:
                        delay = _FIRST_BACKOFF_SECONDS
                if producer is not None:
                    self._send(producer, self._take())
            except Exception:  # the thread must outlive any one bad batch
                log.exception("capture log: sending failed")
            if closing:
                break
            self._wake.wait(_DRAIN_SECONDS)
            self._wake.clear()
        if producer is not None:
            try:
                producer.flush(timeout=max(0.0, self._close_by - time.monotonic()))
            except KafkaError as exc:
                log.warning("capture log: not every sampled row reached Kafka (%s)", exc)
            # Time is up: what the broker has not acknowledged is dropped now, so the counts
            # are final when `close` returns.
            with self._counts_lock:
                unacknowledged, self._in_flight = list(self._in_flight.values()), {}
            for message in unacknowledged:
                self._release(message)
                self._drop(message.subject, "closed", message.rows)
            try:
                producer.close(timeout=max(0.0, self._close_by - time.monotonic()))
            except KafkaError as exc:  # kafka-python's close raises while sends are pending
                log.debug("capture log: the producer closed with sends pending (%s)", exc)
        for offer in self._take():  # never sent: the broker was away
            self._drop(offer.subject, "closed", offer.count)
            with self._lock:
                self._held -= offer.size
        with self._lock:
            self._idle.notify_all()

    def _connect(self, delay: float) -> KafkaProducer | None:
        producer = None
        try:
            self._ensure_topic()
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks=1,
                enable_idempotence=False,  # needs acks=all; a duplicate sample is harmless
                linger_ms=20,
                batch_size=256 * 1024,
                # No compression: gzip is the only codec without extra packages and would spend
                # the serving process's CPU on a sampled side channel.
                compression_type=None,
                max_request_size=2 * _MAX_MESSAGE_BYTES,
                # Sends happen on this thread only, so a wait for metadata never reaches a caller.
                max_block_ms=5_000,
                request_timeout_ms=10_000,
                delivery_timeout_ms=30_000,
                bootstrap_timeout_ms=5_000,
            )
            producer.partitions_for(self.topic)  # metadata now, not at the first send
            log.info("capture log: sending %.3g of rows to %s at %s",
                     self.rate, self.topic, self.bootstrap)
            return producer
        except (KafkaError, OSError) as exc:
            if producer is not None:
                producer.close(timeout=0)
            log.warning("capture log: Kafka at %s unavailable (%s); retrying in %.1f s, "
                        "sampled rows wait in a %d-byte buffer", self.bootstrap, exc, delay,
                        self.limit)
            return None

    def _ensure_topic(self) -> None:
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, bootstrap_timeout_ms=5_000
        )
        try:
            if self.topic not in set(admin.list_topics()):
                try:
                    # One partition: every subject's windows come from one ordered log.
                    admin.create_topics([NewTopic(self.topic, 1, 1)])
                except TopicAlreadyExistsError:
                    pass  # another process created it first
        finally:
            admin.close()

    def _take(self) -> list[_Offer]:
        with self._lock:
            offers, self._queue = self._queue, []
        return offers

    def _send(self, producer: KafkaProducer, offers: list[_Offer]) -> None:
        groups: dict[tuple, list[_Offer]] = {}
        for offer in offers:
            key = (offer.subject, offer.columns, offer.captured_ms // 1000)
            groups.setdefault(key, []).append(offer)
        for group in groups.values():
            try:
                messages = self._encode(group)
            except Exception:  # a value orjson cannot write; drop the group
                log.exception("capture log: cannot encode rows of %s", group[0].subject)
                messages = []
                self._drop(group[0].subject, "error", sum(o.count for o in group))
            with self._lock:
                self._held += sum(len(m.value) for m in messages) - sum(o.size for o in group)
                if self._held <= 0 and not self._queue:
                    self._idle.notify_all()
            for message in messages:
                with self._counts_lock:
                    self._in_flight[id(message)] = message
                try:
                    future = producer.send(
                        self.topic, key=message.subject.encode(), value=message.value,
                        timestamp_ms=message.captured_ms,
                    )
                except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds
                    self._failed(message, exc)
                    continue
                future.add_callback(self._acked, message)
                future.add_errback(self._failed, message)

    def _encode(self, group: list[_Offer]) -> list[_Message]:
        first = group[0]
        rows: list[Sequence] = []
        newest: dict[str, int] = {}
        for offer in group:
            if isinstance(offer.rows, pa.Table):
                rows.extend(zip(*(column.to_pylist() for column in offer.rows.columns)))
            else:
                rows.extend(offer.rows)
            for view, times in offer.times.items():
                ms = _newest_ms(times)
                if ms is not None and ms > newest.get(view, ms - 1):
                    newest[view] = ms
        captured = min(o.captured_ms for o in group)
        return self._chunks(first.subject, list(first.columns), captured, rows, newest)

    def _chunks(self, subject, columns, captured, rows, newest) -> list[_Message]:
        value = orjson.dumps(
            {"subject": subject, "captured_at": captured, "columns": columns, "rows": rows,
             "newest_events": newest},
            default=str,  # NaN and infinities become null by orjson's own rule
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        if len(value) <= _MAX_MESSAGE_BYTES:
            return [_Message(subject, value, captured, len(rows))]
        if len(rows) == 1:
            self._drop(subject, "error", 1)
            log.warning("capture log: a row of %s is larger than %d bytes; dropped",
                        subject, _MAX_MESSAGE_BYTES)
            return []
        half = len(rows) // 2
        return [*self._chunks(subject, columns, captured, rows[:half], newest),
                *self._chunks(subject, columns, captured, rows[half:], newest)]

    # --- lifecycle -----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every offered row is acknowledged or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._held > 0 or self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._idle.wait(min(remaining, _DRAIN_SECONDS))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what waits (for up to `timeout`), then stop; the rest is dropped and counted."""
        if self._closed:
            return
        self._close_by = time.monotonic() + timeout
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        # Still connecting to an absent broker: what waits is dropped now, not whenever.
        for offer in self._take():
            self._drop(offer.subject, "closed", offer.count)
            with self._lock:
                self._held -= offer.size


# --- the reader ---------------------------------------------------------------------------


@dataclass
class Window:
    """Captured rows of one subject. Time windows: [start, end) aligned to multiples of the
    window length since the epoch (an empty window may span several lengths: a traffic stop).
    Count windows: the earliest and the latest capture time of their messages."""

    start: datetime
    end: datetime
    table: pa.Table
    newest_events: dict[str, datetime]
    cursor: dict[int, int]  # partition -> next offset after the window

    @property
    def rows(self) -> int:
        return self.table.num_rows


class CaptureUnavailable(KafkaError):
    """Kafka did not answer; the reader keeps its place, so poll again later. (A KafkaError, so
    callers that handle Kafka's own errors handle it too.)"""


_SCALARS = frozenset({type(None), bool, int, float, str})


@dataclass
class _Parsed:
    columns: dict[str, int]
    values: list[tuple]  # per column
    rows: int
    captured_ms: int
    newest: dict[str, int]


def _parse(value: bytes | None, subject: str) -> _Parsed | str:
    """The message, or why it is malformed."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(body, dict):
        return "not a JSON object"
    columns, rows = body.get("columns"), body.get("rows")
    captured, newest = body.get("captured_at"), body.get("newest_events", {})
    if body.get("subject") != subject:
        return f"subject {body.get('subject')!r} under the key {subject!r}"
    if type(captured) is not int:
        return "captured_at is not epoch milliseconds"
    if not isinstance(columns, list) or not all(type(c) is str for c in columns) or len(
        set(columns)
    ) != len(columns):
        return "columns is not a list of distinct names"
    if not isinstance(rows, list) or not all(
        type(r) is list and len(r) == len(columns) for r in rows
    ):
        return "rows is not a list of rows as long as columns"
    if not isinstance(newest, dict) or not all(
        type(v) is int or v is None for v in newest.values()
    ):
        return "newest_events is not a map of view to epoch milliseconds"
    values = list(zip(*rows)) if rows else [() for _ in columns]
    if any(not set(map(type, column)) <= _SCALARS for column in values):
        return "a value is not a JSON scalar"
    return _Parsed(
        {name: i for i, name in enumerate(columns)}, values, len(rows), captured,
        {view: ms for view, ms in newest.items() if ms is not None},
    )


def _array(values: list) -> pa.Array:
    """Arrow's own inference (ints -> int64, numbers -> float64, strings -> string); a column
    mixing kinds becomes float64 if all numbers, else string."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if all(v is None or type(v) in (int, float) for v in values):
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
        return pa.array([None if v is None else str(v) for v in values], pa.string())


@dataclass
class _Open:
    """The window being filled: only its messages are held."""

    start_ms: int | None = None  # time windows: aligned bounds
    end_ms: int | None = None
    messages: list[_Parsed] = field(default_factory=list)
    rows: int = 0

    def add(self, message: _Parsed) -> None:
        self.messages.append(message)
        self.rows += message.rows

    def table(self) -> pa.Table:
        names = dict.fromkeys(name for m in self.messages for name in m.columns)
        arrays = {}
        for name in names:
            values: list = []
            for m in self.messages:
                at = m.columns.get(name)
                values.extend(m.values[at] if at is not None else repeat(None, m.rows))
            arrays[name] = _array(values)
        return pa.table(arrays)

    def newest(self) -> dict[str, datetime]:
        newest: dict[str, int] = {}
        for m in self.messages:
            for view, ms in m.newest.items():
                newest[view] = max(newest.get(view, ms), ms)
        return {view: _datetime(ms) for view, ms in newest.items()}


class CaptureReader:
    """Windows of one subject's captured rows, from `cursor` (None: the earliest offset).

    Count windows close after the message that brings them to `window.rows`. Time windows close
    when a message at or after their end arrives, or by the clock once `now` is `GRACE_SECONDS`
    past their end and every message already in the log has been read. Once a first time window
    has started, windows without rows are reported too (a traffic stop shows); a run of them found
    in one poll is one empty window spanning the run, so a reader resuming from an old cursor, or
    after a long stop, reports the gap once instead of window by window. `resume_at`, the end of
    the last window the caller recorded, lets the sequence continue across a restart (without it
    the first window starts at the first message read).

    A message stamped before the open window's start (held back at the producer longer than the
    grace) joins the open window. Malformed messages are logged, counted and skipped.
    """

    def __init__(
        self,
        settings: Settings,
        subject: str,
        window: WindowConfig,
        cursor: dict[int, int] | None = None,
        *,
        resume_at: datetime | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.subject = subject
        self.window = window
        self.topic = settings.capture_topic
        self._key = subject.encode()
        self._position: dict[int, int] = dict(cursor or {})
        self._start_cursor = dict(cursor or {})
        self._width = round(window.minutes * 60_000) if window.minutes is not None else None
        self._next_start: int | None = None  # time windows: the end of the last one reported
        if resume_at is not None and self._width is not None:
            self._next_start = self._align(_epoch_ms(resume_at))
        self._open: _Open | None = None
        self._closed: list[Window] = []
        self._consumer: KafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self.malformed = 0
        self._metrics = _metrics_in(registry if registry is not None else REGISTRY)

    def _align(self, ms: int) -> int:
        return ms - ms % self._width

    # --- Kafka ---------------------------------------------------------------------------

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id="featurestore-capture-reader",
                group_id=None,
                enable_auto_commit=False,
                allow_auto_create_topics=False,  # the producers create it, with one partition
                # A cursor outside the log (retention removed it) restarts at the oldest row.
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=8 * 1024 * 1024,
                bootstrap_timeout_ms=10_000,
            )
        consumer = self._consumer
        if not self._partitions:
            partitions = sorted(consumer.partitions_for_topic(self.topic))
            if partitions:  # else no producer has created the topic yet
                self._partitions = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(self._partitions)
                for tp in self._partitions:
                    if tp.partition in self._start_cursor:
                        consumer.seek(tp, self._start_cursor[tp.partition])
                    else:
                        consumer.seek_to_beginning(tp)
        return consumer

    def _read_to_end(self, consumer: KafkaConsumer) -> bool:
        """Whether every partition has been read up to the highwater mark last fetched."""
        for tp in self._partitions:
            high = consumer.highwater(tp)
            if high is None or consumer.position(tp) < high:
                return False
        return True

    def _handle_batch(self, batch: dict) -> None:
        for tp in sorted(batch, key=lambda tp: tp.partition):
            for record in batch[tp]:
                self._handle(record)

    def poll(self, timeout_seconds: float, now: datetime | None = None) -> list[Window]:
        """Read what the log holds (waiting up to `timeout_seconds` for new messages) and return
        the windows closed since the last call, in order. It returns once it has read to the end
        of the log, or as soon as a fetched batch closed a window: call again at once when it
        returned windows, there may be more. Raises CaptureUnavailable when Kafka is away."""
        deadline = time.monotonic() + timeout_seconds
        try:
            consumer = self._connect()
            if not self._partitions:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return self._take_closed()
            while True:
                remaining = max(0, int((deadline - time.monotonic()) * 1000))
                batch = consumer.poll(timeout_ms=remaining)
                self._handle_batch(batch)
                at_end = not batch or self._read_to_end(consumer)
                if at_end or self._closed or not remaining:
                    break
            if self._width is not None and at_end:
                self._close_by_clock(consumer, now or datetime.now(UTC), deadline)
        except KafkaError as exc:
            raise CaptureUnavailable(
                f"the capture log {self.topic} at {self.settings.kafka_bootstrap_servers} is "
                f"unavailable: {exc}"
            ) from exc
        return self._take_closed()

    def _take_closed(self) -> list[Window]:
        closed, self._closed = self._closed, []
        return closed

    def _close_by_clock(self, consumer: KafkaConsumer, now: datetime, deadline: float) -> None:
        horizon = self._align(_epoch_ms(now) - round(GRACE_SECONDS * 1000))
        if not self._clock_due(horizon):
            return
        # Closing by the clock needs every message stamped before the end: read to the end
        # offsets of this moment first (those reads may close windows by message).
        ends = consumer.end_offsets(self._partitions)
        give_up = max(deadline, time.monotonic() + 2.0)
        while any(consumer.position(tp) < ends[tp] for tp in self._partitions):
            if time.monotonic() >= give_up:
                return
            self._handle_batch(consumer.poll(timeout_ms=200))
        if self._open is not None and self._open.end_ms <= horizon:
            self._close_open()
        if self._open is None and self._next_start is not None and self._next_start < horizon:
            self._close_empty(self._next_start, horizon)

    def _clock_due(self, horizon: int) -> bool:
        if self._open is not None:
            return self._open.end_ms <= horizon
        return self._next_start is not None and self._next_start < horizon

    # --- windows -------------------------------------------------------------------------

    def _handle(self, record) -> None:
        partition, offset = record.partition, record.offset
        if record.key != self._key:
            self._position[partition] = offset + 1
            return
        message = _parse(record.value, self.subject)
        if isinstance(message, str):
            self.malformed += 1
            self._metrics.malformed.labels(self.subject).inc()
            log.warning("capture log: skipped a malformed message at %s partition %d offset %d "
                        "(%s)", record.topic, partition, offset, message)
            self._position[partition] = offset + 1
            return
        if self._width is None:
            self._open = self._open or _Open()
            self._open.add(message)
            self._position[partition] = offset + 1
            if self._open.rows >= self.window.rows:
                self._close_open()
            return
        start = self._align(message.captured_ms)
        if self._open is not None and message.captured_ms >= self._open.end_ms:
            self._close_open()  # its cursor stops before this message
        if self._open is None:
            if self._next_start is not None:
                if start > self._next_start:
                    self._close_empty(self._next_start, start)
                start = max(start, self._next_start)
            self._open = _Open(start, start + self._width)
        self._open.add(message)
        self._position[partition] = offset + 1

    def _close_open(self) -> None:
        window = self._open
        self._open = None
        if self._width is None:
            stamps = [m.captured_ms for m in window.messages]
            start, end = _datetime(min(stamps)), _datetime(max(stamps))
        else:
            start, end = _datetime(window.start_ms), _datetime(window.end_ms)
            self._next_start = window.end_ms
        self._closed.append(
            Window(start, end, window.table(), window.newest(), dict(self._position))
        )

    def _close_empty(self, start_ms: int, end_ms: int) -> None:
        self._closed.append(
            Window(_datetime(start_ms), _datetime(end_ms), pa.table({}), {}, dict(self._position))
        )
        self._next_start = end_ms

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
