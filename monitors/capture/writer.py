"""`CaptureLog`: the writer of the capture log, one per API worker process and per stream worker.

Each offered row is kept with probability `settings.capture_rate`. The caller pays for the draw
and a copy of the kept values, nothing more: a background thread connects to Kafka (retrying
while the broker is away), creates the topic, encodes (`messages`) and sends. At most
`settings.capture_buffer_bytes` wait for the broker; what does not fit is dropped and counted,
never waited for, and nothing raises into the request or the write being sampled.

Offers of one subject and columns drained together (every `_DRAIN_SECONDS`) within the same
second of capture time become one message, so a message never straddles a window boundary of
whole seconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import pyarrow as pa
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from featurestore.settings import Settings
from monitors.capture import messages
from monitors.capture.metrics import metrics_in
from streaming import kafka

log = logging.getLogger("featurestore.capture")

# The sender wakes this often; a request never wakes a thread itself. (Capture time runs behind
# the log by up to this, among others: see `windows.GRACE_SECONDS`.)
_DRAIN_SECONDS = 0.05
_BACKOFF = kafka.Backoff(first=0.5, limit=30.0)
_DROP_LOG_SECONDS = 60.0
_FEW_ROWS = 16
# What a waiting offer holds, roughly: its lists, and the values it keeps alive after the
# response is gone (a reference and a float object each). Encoded messages count their exact size.
_OFFER_BYTES, _ROW_BYTES, _VALUE_BYTES = 256, 64, 32


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
        self._settings = settings
        self.bootstrap = settings.kafka_bootstrap_servers
        self.limit = settings.capture_buffer_bytes
        # One generator per process (seed None: from the OS), so API workers sample independently.
        self._random = random.Random(seed)
        self._rng = np.random.default_rng(seed)
        self._metrics = metrics_in(registry if registry is not None else REGISTRY)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: list[_Offer] = []
        self._held = 0  # bytes: waiting offers (estimated) + unacknowledged messages (exact)
        self._closed = False
        self._stopping = threading.Event()  # set by `close`: a wait for the broker ends
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
            rows: list[Sequence]
            times: Mapping[str, Sequence]
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
        # Once closing, a send fails because `close` gave up on it (or ran out of time).
        self._drop(message.subject, "closed" if self._closed else "send_failed", message.rows)
        log.debug("capture log: a send failed: %s", exc)

    @property
    def held_bytes(self) -> int:
        return self._held

    # --- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        # Closed before the first attempt with nothing waiting: no attempt at all.
        producer = None if self._closed and not self._queue else self._connect()
        if producer is not None:
            while True:
                closing = self._closed
                try:
                    self._send(producer, self._take())
                except Exception:  # the thread must outlive any one bad batch
                    log.exception("capture log: sending failed")
                if closing:
                    break
                self._wake.wait(_DRAIN_SECONDS)
                self._wake.clear()
            self._finish(producer)
        for offer in self._take():  # never sent: the broker was away
            self._drop(offer.subject, "closed", offer.count)
            with self._lock:
                self._held -= offer.size
        with self._lock:
            self._idle.notify_all()

    def _finish(self, producer: KafkaProducer) -> None:
        kafka.close_producer(
            producer, max(0.0, self._close_by - time.monotonic()),
            unsent="capture log: the sampled rows not acknowledged are dropped (counted, "
                   "reason closed)",
        )
        # Time is up: what the broker has not acknowledged, and whose failure has not been
        # reported yet, is dropped now, so the counts are final when `close` returns.
        with self._counts_lock:
            unacknowledged, self._in_flight = list(self._in_flight.values()), {}
        for message in unacknowledged:
            self._release(message)
            self._drop(message.subject, "closed", message.rows)

    def _connect(self) -> KafkaProducer | None:
        """A producer, once Kafka answers (sampled rows wait in the buffer meanwhile); None
        when `close` came first."""
        try:
            return kafka.retrying(
                "capture log", self._open_producer, servers=self.bootstrap,
                stop=self._stopping, backoff=_BACKOFF, errors=(KafkaError, OSError),
            )
        except kafka.Stopped:
            return None

    def _open_producer(self) -> KafkaProducer:
        with kafka.admin(self._settings, client_id=self.client_id,
                         bootstrap_timeout_ms=5_000) as admin:
            # One partition: every subject's windows come from one ordered log.
            kafka.ensure_topics(admin, {self.topic: 1})
        producer = kafka.producer(
            self._settings,
            client_id=self.client_id,
            acks=1,
            max_in_flight_requests_per_connection=5,  # kafka-python's default: order is moot
            linger_ms=20,
            batch_size=256 * 1024,
            # No compression: gzip is the only codec without extra packages and would spend
            # the serving process's CPU on a sampled side channel.
            compression_type=None,
            max_request_size=2 * messages.MAX_MESSAGE_BYTES,
            # Sends happen on this thread only, so a wait for metadata never reaches a caller.
            max_block_ms=5_000,
            # RESILIENT_SENDS' request timeout and reconnect backoff: a broker that drops its
            # connections or stops answering is noticed and reconnected to within seconds.
            # Unlike them, a sample is given up after 30 s (counted, reason send_failed):
            # stale samples are worth less than the buffer they hold, which bounds what waits.
            # Not idempotent (that needs acks=all): a duplicate sample is harmless.
            **{**kafka.RESILIENT_SENDS, "delivery_timeout_ms": 30_000},
            bootstrap_timeout_ms=5_000,
        )
        try:
            producer.partitions_for(self.topic)  # metadata now, not at the first send
        except BaseException:
            producer.close(timeout=0)
            raise
        log.info("capture log: sending %.3g of rows to %s at %s",
                 self.rate, self.topic, self.bootstrap)
        return producer

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
                ms = messages.newest_ms(times)
                if ms is not None and ms > newest.get(view, ms - 1):
                    newest[view] = ms
        captured = min(o.captured_ms for o in group)
        chunks, too_large = messages.encode_chunks(
            first.subject, captured, first.columns, rows, newest
        )
        if too_large:
            self._drop(first.subject, "error", too_large)
            log.warning("capture log: %d row(s) of %s larger than %d bytes; dropped",
                        too_large, first.subject, messages.MAX_MESSAGE_BYTES)
        return [_Message(first.subject, value, captured, count) for value, count in chunks]

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
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        # Still connecting to an absent broker: what waits is dropped now, not whenever.
        for offer in self._take():
            self._drop(offer.subject, "closed", offer.count)
            with self._lock:
                self._held -= offer.size
