"""`featurestore stream run`: the consumer-group worker that keeps online features fresh.

One loop per worker: poll the topics of every source's topology (one per source topic, all in
one consumer group), gather a micro-batch (up to
`stream_batch_events` records or `stream_batch_ms`), let each partition's task compute what it
changes, write the newest rows to the online store, send dead letters and repartitioned events,
and every `stream_checkpoint_seconds` checkpoint each partition (offline files, then the
partition log, then the Kafka offset commit). The checkpoint's files are written by the
checkpoint writer's thread (`streaming.checkpointer`) while the loop goes on writing online
rows; the loop commits the offsets once it finds the checkpoint written.

Faults:
- The online store down: consumption pauses (the group membership is kept by polling paused
  partitions), the same rows are retried with backoff, nothing is checkpointed until they land.
- Kafka down: connecting retries with backoff and a log line; a failed send rewinds every
  partition to its last checkpoint, so what the failed send carried is produced again.
- A partition with no log starts cold: its task seeds its window state from the offline store
  (`streaming.coldstart`) and it is read from the topic's beginning.
- A recreated or truncated topic (another topic id than its log's, or the log's last offset
  gone or holding another record) stops the worker with an error naming the command that
  starts over (`streaming.reset`).
- A rebalance waits for the checkpoint in flight, checkpoints the revoked partitions whose
  online writes have landed and drops the others (their new owner replays them from the log),
  so a partition is handed over cleanly.
- A worker that lost a partition without knowing it yet (paused past its session timeout, cut
  off from the broker) writes no checkpoint of it: every assignment takes the partition's next
  epoch, and a checkpoint whose epoch is no longer the newest is fenced (`streaming.fencing`):
  its offline files are removed, its log is not written, the partition is paused until the
  group's next assignment. A checkpoint that found the log moved under it (its own epoch still
  the newest) rebuilds the partition from the log.
- A checkpoint that cannot be written (disk full, the data directory gone) stops the worker
  with an error naming the cause; its partitions resume from their last checkpoint. A failed
  offset commit is logged and retried with the next checkpoint (the partition log holds them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import pyarrow as pa
import redis
from feast import FeatureStore
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from featurestore import plugins
from featurestore.capture import CaptureSink
from featurestore.definitions import ViewDefinition, select_views
from featurestore.errors import FeatureStoreError
from featurestore.materialize import FeatureWriter, writer_for
from featurestore.settings import Settings
from streaming import deadletter, fencing, kafka, repartition
from streaming import reset as restarts
from streaming import topology as topologies
from streaming.checkpointer import CheckpointWriter, Postponed, SendsFailed, Snapshots
from streaming.coldstart import ColdStart
from streaming.kafka import Stopped
from streaming.metrics import StreamMetrics
from streaming.task import PartitionTask, Step
from streaming.validation import EventValidator, ParsedBatch

log = logging.getLogger("featurestore.stream")
T = TypeVar("T")

_ONLINE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoScriptError)
_MAX_BACKOFF_SECONDS = 10.0
_KAFKA_BACKOFF = kafka.Backoff(first=0.5, limit=_MAX_BACKOFF_SECONDS)
_STATUS_SECONDS = 10.0
_MAX_REQUEST_BYTES = 1_048_576  # kafka-python's default; dead letters are cut to fit it
_FLUSH_TIMEOUT_SECONDS = 10.0  # two request timeouts; then the checkpoint is postponed
# Checkpoints postponed in a row (each a flush that timed out) before the producer is replaced:
# kafka-python 3.0.12's producer can stop delivering for good without an error (its network
# thread dies when a connection closes under a read), which retries never end.
_REPLACE_PRODUCER_AFTER = 3


@dataclass
class _Pending:
    """Online rows of one partition not yet acknowledged by the store."""

    tp: TopicPartition
    step: Step
    sent: bool = False  # handed to the writers on their current connections


@dataclass
class _Buffer:
    records: dict[TopicPartition, list] = field(default_factory=dict)
    count: int = 0
    since: float | None = None

    def add(self, tp: TopicPartition, records: list) -> None:
        self.records.setdefault(tp, []).extend(records)
        self.count += len(records)
        if self.since is None:
            self.since = time.monotonic()

    def drop(self, tp: TopicPartition) -> None:
        self.count -= len(self.records.pop(tp, []))

    def take(self) -> dict[TopicPartition, list]:
        records, self.records, self.count, self.since = self.records, {}, 0, None
        return records


class CheckpointFailed(FeatureStoreError):
    """Writing a checkpoint failed; the worker stops."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.revoke(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.assign(assigned)


class StreamWorker:
    def __init__(
        self, settings: Settings, store: FeatureStore, metrics: StreamMetrics | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        views = select_views(store, None, aggregated_only=True)
        self.topologies = topologies.build(views, settings.stream_group)
        # Each consumed topic's topology and stage, and each source's event validator.
        self.stages = {
            topic: (topology, stage)
            for topology in self.topologies
            for topic, stage in topology.stages.items()
        }
        self.validators = {
            topology.source_topic: EventValidator(
                topology.schema, settings.stream_max_message_bytes, topology.ranges,
                topology.timestamp_range,
            )
            for topology in self.topologies
        }
        self.cold_starts = {
            topology.source_topic: ColdStart(topology, settings.stream_log_dir)
            for topology in self.topologies
        }
        self.metrics = metrics or StreamMetrics()
        self.tasks: dict[TopicPartition, PartitionTask] = {}
        self.buffer = _Buffer()
        self.writers: dict[str, FeatureWriter] = {}
        self.unwritten: list[_Pending] = []
        self.last_record_at = time.monotonic()
        self._send_failed: Exception | None = None
        self._failed = False  # an unexpected error: leave partitions at their last checkpoint
        self.dead_letter_limit = deadletter.size_limit(_MAX_REQUEST_BYTES, None)
        self.forward_limit = deadletter.size_limit(_MAX_REQUEST_BYTES, None)
        self.partitions: dict[str, int] = {}  # per consumed topic, read at start
        self.topic_ids: dict[str, str | None] = {}  # per consumed topic, read at start
        self.next_offsets: dict[TopicPartition, int] = {}  # the offset each partition reads next
        # Partitions re-reading the last record their log applied: (its offset, its digest).
        self.verifying: dict[TopicPartition, tuple[int, str]] = {}
        # An error found in a rebalance callback, raised by the loop: kafka-python would bury
        # it under "User rebalance callback throws an error".
        self._callback_error: FeatureStoreError | None = None
        self.checkpoints = CheckpointWriter(self._flush_sends)
        self.postponed: Snapshots = []  # snapshots whose sends Kafka did not acknowledge yet
        self.unacknowledged = 0  # checkpoints postponed in a row
        # The next offset of every partition whose log this worker appended: all are
        # committed with each checkpoint, so a failed commit is retried by the next.
        self.logged: dict[TopicPartition, int] = {}
        self._stop = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.capture: CaptureSink | None = None  # a sample of the rows written, for monitoring

    # --- lifecycle -----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_seconds: float | None = None) -> None:
        """Consume until `stop` is set (or, with `idle_seconds`, until no record came for that
        long after partitions were assigned); then checkpoint everything and leave the group."""
        self._stop = stop or threading.Event()
        try:
            self.producer = self._retrying("producer", self._new_producer)
            self._retrying("topics", self._ensure_topics)
            self.consumer = self._retrying("consumer", self._new_consumer)
        except Stopped:
            return
        self.capture = plugins.capture_sink(
            self.settings, f"{self.settings.stream_group}-worker", registry=self.metrics.registry
        )
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        checkpoint_at = status_at = time.monotonic()
        fetched = 0  # polls that returned records since the last micro-batch
        try:
            while not self._stop.is_set():
                # A batch goes out as soon as the worker has caught up, not `stream_batch_ms`
                # later. The first poll after a batch returns what the fetch sent before it
                # brought (records from before the batch was processed); the consumer sends the
                # next fetch only then, so the worker waits for that one too (one round trip,
                # at most `stream_fetch_max_wait_ms`) and takes the records that arrived while
                # it was busy, instead of leaving them to a batch of their own a cycle later.
                arrived = self._poll(timeout_ms=self._poll_timeout_ms(fetched))
                fetched += bool(arrived)
                # The last batch's online writes ran in Redis while this poll waited.
                self._collect_online()
                now = time.monotonic()
                if self.buffer.count >= self.settings.stream_batch_events or (
                    self.buffer.since is not None
                    and (not arrived
                         or now - self.buffer.since >= self.settings.stream_batch_ms / 1000
                         or (fetched >= 2 and self._caught_up()))
                ):
                    self._process(self.buffer.take())
                    fetched = 0
                self._collect_checkpoint(wait=False)
                if self.unacknowledged >= _REPLACE_PRODUCER_AFTER:
                    self._replace_producer()
                if (
                    now - checkpoint_at >= self.settings.stream_checkpoint_seconds
                    and not self.checkpoints.busy  # else: as soon as the one in flight is done
                ):
                    self._checkpoint(list(self.tasks))
                    checkpoint_at = now
                if now - status_at >= _STATUS_SECONDS:
                    self._log_status()
                    status_at = now
                if (
                    idle_seconds is not None
                    and self.tasks
                    and not self.buffer.count
                    and now - self.last_record_at >= idle_seconds
                ):
                    break
            self._process(self.buffer.take())
            self._collect_online()
            self._checkpoint(list(self.tasks), wait=True, final=True)
        except Stopped:
            pass
        except Exception:
            # Nothing more is checkpointed (what was processed may be half sent): the next
            # worker replays from the log. The error is logged here, before the rebalance
            # callbacks of the shutdown could bury it.
            self._failed = True
            log.exception("the stream worker failed; its partitions stay at their last checkpoint")
            raise
        finally:
            self._close()

    def stop(self) -> None:
        self._stop.set()

    @property
    def topics(self) -> list[str]:
        """Every topic the worker consumes: each source topic and its repartition topics."""
        return list(self.stages)

    @property
    def _consumer(self) -> KafkaConsumer:
        """The consumer, for the loop and its callbacks (they run once `run` connected)."""
        if self.consumer is None:
            raise RuntimeError("the stream worker is not connected to Kafka")
        return self.consumer

    @property
    def _producer(self) -> KafkaProducer:
        if self.producer is None:
            raise RuntimeError("the stream worker is not connected to Kafka")
        return self.producer

    def _close(self) -> None:
        # The checkpoint in flight is finished before the partitions move to another worker.
        self.checkpoints.close()
        if self.consumer is not None:
            self.consumer.close(autocommit=False)  # leaves the group: its partitions move now
        if self.producer is not None:
            kafka.close_producer(
                self.producer, 5.0,
                unsent="the worker's unacknowledged forwards to repartition topics and dead "
                       "letters are not delivered; their partitions resume from their last "
                       "checkpoint, which produces them again",
            )
        if self.capture is not None:
            self.capture.close()
        for writer in self.writers.values():
            with contextlib.suppress(*_ONLINE_ERRORS):
                writer.close()
        self.writers.clear()

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()` until Kafka answers, counting each failure as an outage."""
        return kafka.retrying(
            what, attempt, servers=self.settings.kafka_bootstrap_servers, stop=self._stop,
            backoff=_KAFKA_BACKOFF,
            on_failure=lambda _exc: self.metrics.outages.labels("kafka").inc(),
        )

    def _new_consumer(self) -> KafkaConsumer:
        return kafka.consumer(
            self.settings,
            client_id=f"{self.settings.stream_group}-worker",
            group_id=self.settings.stream_group,
            # Every partition is sought explicitly; an offset no longer in the topic is an error.
            auto_offset_reset="none",
            session_timeout_ms=self.settings.stream_session_timeout_ms,
            heartbeat_interval_ms=max(1_000, self.settings.stream_session_timeout_ms // 6),
            max_poll_records=self.settings.stream_batch_events,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=self.settings.stream_fetch_max_wait_ms,
        )

    def _new_producer(self) -> KafkaProducer:
        # The adapter's ordered sends (one request in flight, acks=all), retried until they
        # land: the next stage can drop replays by offset, so a dropped connection may cost a
        # batch produced twice, never a gap.
        return kafka.producer(
            self.settings,
            client_id=f"{self.settings.stream_group}-worker",
            batch_size=256 * 1024,
            max_request_size=_MAX_REQUEST_BYTES,
            **kafka.RESILIENT_SENDS,
        )

    def _ensure_topics(self) -> None:
        """Create the source, repartition and dead-letter topics that do not exist yet.

        A missing source topic gets `stream_partitions` partitions; its repartition topics get
        as many as it has.
        """
        with kafka.admin(self.settings) as admin:
            existing = set(admin.list_topics())
            wanted = {self.settings.dead_letter_topic: self.settings.stream_partitions}
            for topology in self.topologies:
                source = topology.source_topic
                partitions = self.settings.stream_partitions
                if source in existing:
                    partitions = len(admin.describe_topics([source])[0]["partitions"])
                wanted.update(dict.fromkeys(topology.topics, partitions))
            created = kafka.ensure_topics(admin, wanted, existing=existing)
            if created:
                log.info("created topics %s", created)
            # Read here, not in the rebalance listener, which must not block on the network.
            self.partitions = {topic: wanted[topic] for topic in self.stages}
            self.topic_ids = {
                t["name"]: restarts.topic_id(t) for t in admin.describe_topics(self.topics)
            }
            self.dead_letter_limit = self._message_limit(admin, [self.settings.dead_letter_topic])
            self.forward_limit = self._message_limit(
                admin, [f.topic for stage in self.stages.values() for f in stage[1].forwards]
            )

    @staticmethod
    def _message_limit(admin: KafkaAdminClient, topics: list[str]) -> int:
        """The bytes a message to any of `topics` may take (the producer's and their limit)."""
        limits = []
        for topic in topics:
            try:
                limits.append(kafka.message_bytes_limit(admin, topic))
            except KafkaError:
                limits.append(None)  # a broker without DescribeConfigs: the producer's limit
        return min(
            (deadletter.size_limit(_MAX_REQUEST_BYTES, limit) for limit in limits),
            default=deadletter.size_limit(_MAX_REQUEST_BYTES, None),
        )

    # --- rebalance -----------------------------------------------------------------------

    def assign(self, assigned: list[TopicPartition]) -> None:
        try:
            self._collect_checkpoint(wait=True)  # a partition log is read only while none is written
        except CheckpointFailed as exc:
            self._callback_error = self._callback_error or exc
        for tp in assigned:
            topology, stage = self.stages[tp.topic]
            task = PartitionTask(
                topology,
                stage,
                tp.partition,
                self.settings.stream_log_dir,
                self.validators[topology.source_topic],
                sources=self.partitions[topology.source_topic],
                cold_start=self.cold_starts[topology.source_topic],
                partitions=self.partitions[tp.topic],
                topic_id=self.topic_ids.get(tp.topic),
            )
            # The epoch before the log is read: a late checkpoint of the partition's old owner
            # is either in the log already or fenced.
            try:
                task.log.take_epoch(self._owner())
            except OSError as exc:  # the log's directory cannot be written: nor can checkpoints
                self._callback_error = self._callback_error or CheckpointFailed(
                    f"writing the partition log of {tp.topic}-{tp.partition} failed "
                    f"({type(exc).__name__}: {exc}); the worker stops, its partitions resume "
                    "from their last checkpoint"
                )
                self._consumer.seek_to_beginning(tp)  # a position, so the consumer has no error first
                self._consumer.pause(tp)
                continue
            self._consumer.resume(tp)  # paused when fenced: assigned again, it is read again
            try:
                resume = task.restore()
            except FeatureStoreError as exc:  # e.g. unreadable offline data to seed from
                self._callback_error = self._callback_error or exc
                self._consumer.seek_to_beginning(tp)  # a position, so the consumer has no error first
                self._consumer.pause(tp)
                continue
            if task.logged_topic_id and task.topic_id and task.logged_topic_id != task.topic_id:
                self._callback_error = self._callback_error or restarts.TopicRestartedError(
                    self._restarted_detail(tp, f"its partition log ({task.log.directory}) "
                                           f"applied offsets up to {_last(resume)} of topic id "
                                           f"{task.logged_topic_id}, the topic now has id "
                                           f"{task.topic_id}")
                )
                # A position, so the consumer has no error first.
                self._consumer.seek(tp, resume or 0)
                self._consumer.pause(tp)
                continue
            self.verifying.pop(tp, None)
            if resume is None:
                self._consumer.seek_to_beginning(tp)  # cold start: hand over from batch
                self.next_offsets.pop(tp, None)
            elif task.logged_last_record is not None:
                # Resumes after re-reading the last applied record, which must be the same.
                self._consumer.seek(tp, resume - 1)
                self.next_offsets[tp] = resume - 1
                self.verifying[tp] = (resume - 1, task.logged_last_record)
            else:
                self._consumer.seek(tp, resume)
                self.next_offsets[tp] = resume
            self.tasks[tp] = task
            log.info("assigned %s-%d, %s", tp.topic, tp.partition,
                     f"resuming at {resume}" if resume is not None else
                     f"cold start: {_handover_text(task.handover_us)}")
        self.last_record_at = time.monotonic()

    def _owner(self) -> str:
        """Who takes an epoch, for whoever reads the epoch file."""
        group = self._consumer.group_metadata()
        return (f"host {socket.gethostname()} pid {os.getpid()} group {group.group_id} "
                f"generation {group.generation_id} member {group.member_id}")

    def _restarted_detail(self, tp: TopicPartition, what: str) -> str:
        source = self.stages[tp.topic][0].source_topic
        return restarts.restarted(tp.topic, tp.partition, source, self.settings.stream_group, what)

    def revoke(self, revoked: list[TopicPartition]) -> None:
        """Finish the checkpoint in flight, checkpoint what can be, then forget the partitions;
        the buffer's records go too.

        kafka-python may call this on its network thread, where a blocking consumer call
        fails: the offsets are committed asynchronously (the partition log is the truth).
        """
        mine = [tp for tp in revoked if tp in self.tasks]
        try:
            if not self._failed:
                # Rows that landed make their partitions checkpointable; the others are
                # dropped (no retrying here: a callback must not poll).
                self._collect_online(retry=False)
            if self._failed:
                self.checkpoints.close()  # the one in flight ends before the partitions move
            else:
                self._checkpoint(mine, wait=True)
        except CheckpointFailed as exc:
            self._callback_error = self._callback_error or exc
        except (KafkaError, *_ONLINE_ERRORS) as exc:
            log.warning("could not checkpoint revoked partitions (%s); their next owner "
                        "replays them from the last checkpoint", exc)
        except Exception:
            # kafka-python would report only "User rebalance callback throws an error".
            log.exception("checkpointing revoked partitions failed; their next owner replays "
                          "them from the last checkpoint")
        finally:
            # A checkpoint fenced meanwhile has forgotten some of them already.
            self._forget(mine)

    def _forget(self, tps: list[TopicPartition]) -> dict[TopicPartition, PartitionTask]:
        """Drop every trace of the partitions `tps`: their tasks, buffered records, pending
        check of the resumed record, logged offsets, unwritten rows and postponed snapshots;
        returns the tasks there were (a partition already forgotten is no error)."""
        gone = set(tps)
        tasks = {tp: self.tasks.pop(tp) for tp in tps if tp in self.tasks}
        for tp in gone:
            self.buffer.drop(tp)
            self.verifying.pop(tp, None)
            self.logged.pop(tp, None)
        self.unwritten = [p for p in self.unwritten if p.tp not in gone]
        self.postponed = [(tp, s) for tp, s in self.postponed if tp not in gone]
        return tasks

    # --- the loop ------------------------------------------------------------------------

    def _poll(self, timeout_ms: int | None = None) -> int:
        """Poll up to `timeout_ms` (default `stream_batch_ms`); returns how many records were
        added to the buffer."""
        if timeout_ms is None:
            timeout_ms = self.settings.stream_batch_ms
        try:
            polled = self._consumer.poll(
                timeout_ms=timeout_ms,
                max_records=max(1, self.settings.stream_batch_events - self.buffer.count),
            )
        except OffsetOutOfRangeError as exc:
            tp, offset = next(iter(exc.args[0].items()))
            raise restarts.TopicRestartedError(self._restarted_detail(
                tp, f"offset {offset}, where its partition log resumes, is not in the topic"
            )) from exc
        if self._callback_error is not None:
            raise self._callback_error
        added = self.buffer.count
        for tp, records in polled.items():
            if tp in self.verifying and records:
                records = self._verified(tp, records)
            if tp in self.tasks and records:
                expected = self.next_offsets.get(tp, records[0].offset)
                if records[0].offset < expected:
                    raise restarts.TopicRestartedError(self._restarted_detail(
                        tp, f"it delivered offset {records[0].offset} where {expected} was next "
                        "(offsets below its partition log's)"
                    ))
                self.next_offsets[tp] = records[-1].offset + 1
                self.buffer.add(tp, records)
                self.metrics.consumed.labels(tp.topic).inc(len(records))
                self.last_record_at = time.monotonic()
        return self.buffer.count - added

    def _poll_timeout_ms(self, fetched: int) -> int | None:
        """How long the next poll may wait: `stream_batch_ms` for an empty buffer (while online
        writes run, only a fetch's wait: their replies are read after it); for the fetch in
        flight while records wait (the batch's second fetch); else only what arrived."""
        if not self.buffer.count:
            return self.settings.stream_fetch_max_wait_ms if self.unwritten else None
        if fetched >= 2 or self.buffer.since is None:
            return 0
        left_ms = self.settings.stream_batch_ms - (time.monotonic() - self.buffer.since) * 1000
        return max(0, min(self.settings.stream_fetch_max_wait_ms, int(left_ms)))

    def _caught_up(self) -> bool:
        """Whether every partition read has been consumed up to the end the broker last
        reported (a backlog is read on until the batch is full)."""
        paused = self._consumer.paused()
        for tp in self.tasks:
            if tp in paused:
                continue
            end = self._consumer.highwater(tp)
            if end is None or self.next_offsets.get(tp, 0) < end:
                return False
        return True

    def _verified(self, tp: TopicPartition, records: list) -> list:
        """`records` without the re-read last applied record, once it proved the same."""
        offset, digest = self.verifying.pop(tp)
        first = records[0]
        if first.offset != offset:
            what = f"offset {offset}, the last its partition log applied, is no longer in the " \
                f"topic (it delivered offset {first.offset} first)"
        elif restarts.record_digest(first.key, first.value) != digest:
            what = f"offset {offset}, the last its partition log applied, holds another record " \
                "(offsets restarted below the log's)"
        else:
            self.next_offsets[tp] = offset + 1
            return records[1:]
        raise restarts.TopicRestartedError(self._restarted_detail(tp, what))

    def _process(self, batch: dict[TopicPartition, list]) -> None:
        batch = {tp: records for tp, records in batch.items() if tp in self.tasks}
        parsed = self._validated(batch)
        for tp, records in batch.items():
            task = self.tasks[tp]
            step = task.process(records, parsed=parsed.get(tp))
            task.last_record_digest = restarts.record_digest(records[-1].key, records[-1].value)
            self.metrics.duplicates.inc(step.duplicates)
            self.metrics.handed_over.labels(tp.topic).inc(step.handed_over)
            self.metrics.record_applied(tp.topic, len(step.applied_timestamps_ms))
            self.metrics.watermark.labels(tp.topic).set(max(task.watermark, 0) / 1e6)
            # Pending before sending: a send that raises leaves the partition uncheckpointed.
            self.unwritten.append(_Pending(tp, step))
            self._send(tp, step)
        self._send_online()

    def _validated(self, batch: dict[TopicPartition, list]) -> dict[TopicPartition, ParsedBatch]:
        """The source partitions' messages, validated in one call per source topic (a call
        costs ~1 ms whatever its size; each message is judged on its own either way)."""
        per_topic: dict[str, list[TopicPartition]] = {}
        for tp in batch:
            if tp.topic in self.validators:
                per_topic.setdefault(tp.topic, []).append(tp)
        parsed = {}
        for topic, tps in per_topic.items():
            try:
                whole = self.validators[topic].parse_batch(
                    [r.value for tp in tps for r in batch[tp]]
                )
            except Exception as exc:  # noqa: BLE001  # whatever it is, it must not stop the stream
                # Each task then validates its own records and contains what raises to the one
                # record that does (a dead letter, logged with its traceback there).
                log.warning("validating %s's micro-batch in one call raised (%s: %s); its "
                            "partitions validate their own", topic, type(exc).__name__, exc)
                continue
            start = 0
            for tp in tps:
                parsed[tp] = whole.part(start, start + len(batch[tp]))
                start += len(batch[tp])
        return parsed

    def _send(self, tp: TopicPartition, step: Step) -> None:
        for letter in step.dead_letters:
            self.metrics.record_dead_letter(letter.rejected.reason)
            key, value, headers = deadletter.message(
                letter, tp.topic, tp.partition, self.dead_letter_limit
            )
            self._producer.send(
                self.settings.dead_letter_topic, value=value, key=key, headers=headers
            ).add_errback(self._on_send_error)
        # One message per target partition (or a few, to fit the limit), not one per event.
        for forward in step.forwards:
            for message in repartition.encode(
                forward.events, forward.offsets, forward.timestamps_ms, key=forward.key,
                source_topic=tp.topic, source_partition=tp.partition,
                partitions=self.partitions[forward.topic], limit=self.forward_limit,
            ):
                self._producer.send(
                    forward.topic, value=message.value, partition=message.partition,
                    headers=message.headers, timestamp_ms=message.timestamp_ms,
                ).add_errback(self._on_send_error)

    def _on_send_error(self, exc: Exception) -> None:
        self._send_failed = exc

    def _writer(self, view) -> FeatureWriter:
        if view.name not in self.writers:
            self.writers[view.name] = writer_for(self.settings, self.store, view)
        return self.writers[view.name]

    def _send_online(self) -> None:
        """Send the rows not sent yet without waiting for Redis: the loop polls while the writes
        run, and `_collect_online` reads their replies. A failure is left to it."""
        try:
            self._write_rows([p for p in self.unwritten if not p.sent])
        except _ONLINE_ERRORS:
            self._drop_writers()

    def _collect_online(self, retry: bool = True) -> None:
        """Wait for every unwritten row to land; while the store is down, pause and keep
        rewriting them (`retry`), or leave them unwritten (their partitions uncheckpointed)."""
        delay = 0.5
        paused = False
        while self.unwritten:
            try:
                self._write_rows([p for p in self.unwritten if not p.sent])
                for writer in self.writers.values():
                    writer.flush()
            except _ONLINE_ERRORS as exc:
                self.metrics.outages.labels("online_store").inc()
                self._drop_writers()
                if not retry:
                    return
                log.warning("online store unavailable (%s); consumption paused, retrying in "
                            "%.1f s", exc, delay)
                if not paused:
                    self._consumer.pause(*self._consumer.assignment())
                    paused = True
                self._wait_in_group(delay, exc)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
                continue
            self._record_written()
            self.unwritten = []
        if paused:
            log.info("online store back; consumption resumed")
            self._consumer.resume(*self._consumer.assignment())

    def _write_rows(self, pending: list[_Pending]) -> None:
        """One write per view for `pending`'s rows: a write's encoding costs a fixed amount
        per column, paid once per micro-batch rather than once per partition. Rows of several
        partitions or batches may hold one entity twice: the never-older rule keeps its newest."""
        per_view: dict[str, tuple[ViewDefinition, list[pa.Table]]] = {}
        for item in pending:
            for view, rows in item.step.online:
                per_view.setdefault(view.name, (view, []))[1].append(rows)
        for view, tables in per_view.values():
            self._writer(view).write(tables[0] if len(tables) == 1 else pa.concat_tables(tables))
        for item in pending:
            item.sent = True

    def _wait_in_group(self, seconds: float, outage: Exception) -> None:
        """Wait `seconds` with every partition paused, polling to keep the group membership (a
        rebalance may drop or add partitions); raises Stopped when asked to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise Stopped from outage
            self._poll(timeout_ms=100)
            self._consumer.pause(*self._consumer.assignment())

    def _record_written(self) -> None:
        """Count the rows that landed, sample them for monitoring, observe their freshness."""
        now_ms = time.time() * 1000
        for pending in self.unwritten:
            for view, rows in pending.step.online:
                self.metrics.online_rows.labels(view.name).inc(rows.num_rows)
                if self.capture is not None:
                    self.capture.offer_table(
                        f"view:{view.name}", rows, [f.name for f in view.features],
                        {view.name: view.offline.timestamp_field},
                    )
            if len(pending.step.applied_timestamps_ms):
                self.metrics.observe_freshness(now_ms - pending.step.applied_timestamps_ms)

    def _drop_writers(self) -> None:
        """Close the writers; what they had sent and not seen acknowledged is sent again."""
        for writer in self.writers.values():
            with contextlib.suppress(Exception):  # the store is down; the connection goes anyway
                writer.close()
        self.writers.clear()
        for item in self.unwritten:
            item.sent = False

    def _checkpoint(
        self, tps: list[TopicPartition], wait: bool = False, final: bool = False
    ) -> None:
        """Hand the checkpoint of the partitions `tps` whose online rows have landed to the
        writer; `wait`: for the one in flight first, and for this one to be written and its
        offsets committed (`final`: synchronously, before the worker leaves)."""
        self._collect_checkpoint(wait=True)
        snapshots = self.postponed + self._snapshots(tps)
        self.postponed = []
        if snapshots:
            self.checkpoints.submit(snapshots)
        if wait:
            self._collect_checkpoint(wait=True, final=final)

    def _snapshots(self, tps: list[TopicPartition]) -> Snapshots:
        ready = []
        for tp in tps:
            task = self.tasks.get(tp)
            if task is None or any(p.tp == tp for p in self.unwritten):
                continue
            snapshot = task.snapshot()
            if snapshot is not None:
                ready.append((tp, snapshot))
        return ready

    def _flush_sends(self) -> None:
        """On the writer's thread: every send made so far is acknowledged, or this raises.

        kafka-python's producer is thread-safe: the poll thread goes on sending meanwhile, the
        flush waits only for the batches made before it began. A batch not acknowledged within
        `_FLUSH_TIMEOUT_SECONDS` (the broker away, or its connection being replaced) raises
        KafkaTimeoutError: the checkpoint is postponed while the producer goes on retrying; a
        batch that failed raises SendsFailed (the worker rewinds and produces it again)."""
        self._producer.flush(timeout=_FLUSH_TIMEOUT_SECONDS)
        failed, self._send_failed = self._send_failed, None
        if failed is not None:
            raise SendsFailed(str(failed)) from failed

    def _collect_checkpoint(self, wait: bool, final: bool = False) -> None:
        """Commit the offsets of the checkpoint the writer finished (`wait`: for it)."""
        try:
            written = self.checkpoints.collect(wait)
        except Postponed as postponed:
            self.unacknowledged += 1
            log.warning("Kafka did not acknowledge sends (%s); checkpoint postponed",
                        postponed.__cause__)
            self.postponed = postponed.snapshots + self.postponed
            return
        except SendsFailed as exc:
            log.warning("a send to Kafka failed (%s); rewinding every partition to its last "
                        "checkpoint", exc)
            self._rewind()
            return
        except Exception as exc:
            raise CheckpointFailed(
                f"writing a checkpoint failed ({type(exc).__name__}: {exc}); the worker stops, "
                "its partitions resume from their last checkpoint"
            ) from exc
        if written is None:
            return
        self.unacknowledged = 0
        self._fenced(written.fenced)
        self.metrics.checkpoints.inc(len(written.offsets))
        self.logged.update(written.offsets)
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.logged.items()}
        try:
            if final:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=_log_failed_commit)
        except KafkaError as exc:
            # The partition log is the commit point; committed offsets serve lag monitoring
            # and a new worker with no log.
            log.warning("offset commit failed (%s); the partition log still holds them", exc)

    def _fenced(self, fenced: dict[TopicPartition, fencing.Fenced]) -> None:
        """Forget the partitions a checkpoint was fenced from; rebuild those still ours."""
        self.metrics.fenced.inc(len(fenced))
        tasks = self._forget(list(fenced))
        for tp, exc in fenced.items():
            task = tasks.get(tp)
            if task is None:
                continue
            if fencing.newest(task.log.directory) != task.log.epoch:
                # Another worker owns it: read nothing more until the group says who does.
                log.warning("%s-%d moved to another worker (%s); its checkpoint was not written, "
                            "the partition waits for the next assignment", tp.topic,
                            tp.partition, exc)
                self._consumer.pause(tp)
            else:
                log.warning("%s-%d: its log moved under this worker (%s); rebuilding it from "
                            "the log", tp.topic, tp.partition, exc)
                self.assign([tp])

    def _replace_producer(self) -> None:
        """A new producer for one that acknowledged nothing through `_REPLACE_PRODUCER_AFTER`
        checkpoints; every partition is rewound to its last checkpoint, so what the old one
        held is produced again (the next stage drops what it applied already)."""
        log.warning("Kafka acknowledged none of the worker's sends through %d checkpoints in a "
                    "row; replacing its producer and rewinding every partition to its last "
                    "checkpoint", self.unacknowledged)
        self._collect_checkpoint(wait=True)  # the writer's thread flushes the old one
        self.unacknowledged = 0
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):  # it is broken: nothing of it is kept
                kafka.close_producer(old, 0.0, unsent="the rewind produces them again")
        self.producer = self._retrying("producer", self._new_producer)
        self._rewind()

    def _rewind(self) -> None:
        self.unwritten = []
        self.postponed = []
        for tp in list(self.tasks):
            self.buffer.drop(tp)
        self.assign(list(self.tasks))

    def _log_status(self) -> None:
        p50, p99 = self.metrics.freshness_percentiles([50, 99])
        dead = {r: n for r, n in self.metrics.dead_letter_counts().items() if n}
        log.info(
            "partitions %d, freshness p50 %.0f ms p99 %.0f ms, dead letters %s",
            len(self.tasks), p50, p99, dead or "none",
        )


def _log_failed_commit(_offsets: object, response: object) -> None:
    if isinstance(response, Exception):
        log.warning("offset commit failed (%s); retried with the next checkpoint, the partition "
                    "log holds them", response)


def _last(resume: int | None) -> str:
    """The last offset a partition log applied, from the offset it resumes at."""
    return "none" if resume is None else str(resume - 1)


def _handover_text(micros: int | None) -> str:
    if micros is None:
        return "the offline store holds no events"
    return f"events up to {datetime.fromtimestamp(micros / 1e6, UTC).isoformat()} are batch's"
