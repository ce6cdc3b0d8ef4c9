"""`CaptureReader`: the capture topic read back as windows of one subject.

A thin adapter: it assigns every partition of the topic itself (no consumer group, no commits:
the caller keeps the cursor in SQL with each run), parses each record of the subject
(`messages`) and feeds it to the window rules (`windows`), reading to the end of the log before
the clock may close a time window.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from featurestore.settings import Settings
from monitors.capture import messages
from monitors.capture.metrics import metrics_in
from monitors.capture.windows import CountWindows, TimeWindows, Window
from streaming import kafka

if TYPE_CHECKING:
    from monitors.config import WindowConfig

log = logging.getLogger("featurestore.capture")


class CaptureUnavailable(KafkaError):
    """Kafka did not answer; the reader keeps its place, so poll again later. (A KafkaError, so
    callers that handle Kafka's own errors handle it too.)"""


def window_rules(
    window: WindowConfig, cursor: dict[int, int] | None, resume_at: datetime | None
) -> CountWindows | TimeWindows:
    """The window state for `window`, starting at `cursor` (and, for time windows, continuing
    the sequence from `resume_at`)."""
    if window.minutes is not None:
        resume_ms = None if resume_at is None else messages.epoch_ms(resume_at)
        return TimeWindows(round(window.minutes * 60_000), cursor, resume_ms)
    if window.rows is None:
        raise ValueError("a window is either count (rows) or time (minutes)")
    return CountWindows(window.rows, cursor)


class CaptureReader:
    """Windows of one subject's captured rows, from `cursor` (None: the earliest offset); the
    rules are `monitors.capture.windows`. `resume_at`, the end of the last window the caller
    recorded, lets time windows continue across a restart. Malformed messages are logged,
    counted and skipped."""

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
        self._start_cursor = dict(cursor or {})
        self._windows = window_rules(window, cursor, resume_at)
        self._consumer: KafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self.malformed = 0
        self._metrics = metrics_in(registry if registry is not None else REGISTRY)

    # --- Kafka ---------------------------------------------------------------------------

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = kafka.consumer(
                self.settings,
                client_id="featurestore-capture-reader",
                group_id=None,
                allow_auto_create_topics=False,  # the producers create it, with one partition
                # A cursor outside the log (retention removed it) restarts at the oldest row.
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=8 * 1024 * 1024,
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
                return self._windows.take_closed()
            while True:
                remaining = max(0, int((deadline - time.monotonic()) * 1000))
                batch = consumer.poll(timeout_ms=remaining)
                self._handle_batch(batch)
                at_end = not batch or self._read_to_end(consumer)
                if at_end or self._windows.has_closed or not remaining:
                    break
            if at_end:
                self._close_by_clock(consumer, messages.epoch_ms(now or datetime.now(UTC)),
                                     deadline)
        except KafkaError as exc:
            raise CaptureUnavailable(
                f"the capture log {self.topic} at {self.settings.kafka_bootstrap_servers} is "
                f"unavailable: {exc}"
            ) from exc
        return self._windows.take_closed()

    def _close_by_clock(self, consumer: KafkaConsumer, now_ms: int, deadline: float) -> None:
        if not self._windows.clock_due(now_ms):
            return
        # Closing by the clock needs every message stamped before the end: read to the end
        # offsets of this moment first (those reads may close windows by message).
        ends = consumer.end_offsets(self._partitions)
        give_up = max(deadline, time.monotonic() + 2.0)
        while any(consumer.position(tp) < ends[tp] for tp in self._partitions):
            if time.monotonic() >= give_up:
                return
            self._handle_batch(consumer.poll(timeout_ms=200))
        self._windows.close_by_clock(now_ms)

    def _handle(self, record: Any) -> None:
        partition, offset = record.partition, record.offset
        if record.key != self._key:
            self._windows.skip(partition, offset)
            return
        message = messages.parse(record.value, self.subject)
        if isinstance(message, str):
            self.malformed += 1
            self._metrics.malformed.labels(self.subject).inc()
            log.warning("capture log: skipped a malformed message at %s partition %d offset %d "
                        "(%s)", record.topic, partition, offset, message)
            self._windows.skip(partition, offset)
            return
        self._windows.add(partition, offset, message)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
