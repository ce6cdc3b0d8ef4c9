"""One topic partition's share of the stream work: validate, window, and checkpoint its effects.

`process` turns a micro-batch of records into what they change: the newest feature row per
entity for the online store, dead letters, and events to forward to repartition topics. It
keeps, until the next checkpoint, the applied events and the feature rows for the offline store.
`checkpoint` writes those offline (raw archive and feature tables), then appends the partition
log, the commit point. A replay after a crash restores the window state from the log and
recomputes exactly the rows the lost run computed (windows depend only on the events, and
lateness is decided per event in offset order), so every effect past the commit point is either
removed (offline files) or rewritten with the same values (the online store).

Containment: no record can stop the task. Whatever processing a batch raises, the state is put
back as it was and the batch is processed again in halves, down to the single record that
raises: that one becomes an `internal_error` dead letter (the exception logged with its
traceback), the others are applied. A checkpoint covers only records applied or dead-lettered.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.types import from_feast_to_pyarrow_type

from featurestore import offline
from featurestore.definitions import ViewDefinition
from featurestore.materialize import latest_per_entity
from featurestore.online.feast_layout import event_micros
from streaming import fencing, repartition
from streaming.coldstart import ColdStart, from_stream
from streaming.log import OFFSET, LogOverlap, PartitionLog
from streaming.producer import event_messages
from streaming.repartition import SOURCE_PARTITION
from streaming.topology import Stage, Topology
from streaming.validation import (
    FUTURE_TIMESTAMP,
    INTERNAL_ERROR,
    KEY_MISMATCH,
    LATE,
    MALFORMED_BATCH,
    WRONG_TYPE,
    EventValidator,
    ParsedBatch,
    Rejected,
)
from streaming.windows import NO_WATERMARK, FeatureRows, WindowState, duration_us

log = logging.getLogger("featurestore.stream")

# The header a legacy per-event forwarded message carries besides SOURCE_PARTITION: where it was
# consumed, so the next stage drops the copies a crashed source stage forwards twice.
SOURCE_OFFSET = "featurestore-source-offset"


class Record(Protocol):
    """The part of a Kafka consumer record the task reads."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    rejected: Rejected
    exception: str | None = None  # for `internal_error`: the exception's class and message


@dataclass(frozen=True)
class Forward:
    """Accepted events to forward to a repartition topic keyed by column `key`, with the source
    offset and Kafka timestamp each was consumed with."""

    topic: str
    key: str
    events: pa.Table
    offsets: np.ndarray
    timestamps_ms: np.ndarray


@dataclass
class RowRecord:
    """One event of a forwarded batch, as a record of its own: what its dead letter carries
    (the event as JSON, keyed by its entity, with the batch message's offset and headers)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class _Inputs:
    """A micro-batch's events in consumed order. A position is one event: a message of the
    source topic or a legacy forwarded message, or one row of a forwarded batch."""

    events: pa.Table  # the accepted events; row i is position index[i]
    index: np.ndarray
    offsets: np.ndarray  # per position: the offset of the message it came in
    timestamps_ms: np.ndarray  # per position: its source Kafka timestamp
    sources: np.ndarray  # per position: its input ("" at the source stage)
    record: Callable[[int], Record]  # position -> the record its dead letter carries


@dataclass
class Step:
    """What one micro-batch changed."""

    online: list[tuple[ViewDefinition, pa.Table]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    applied_timestamps_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    duplicates: int = 0
    handed_over: int = 0  # events at or before the hand-over point: batch's, skipped

    def extend(self, other: Step) -> None:
        self.online += other.online
        self.dead_letters += other.dead_letters
        self.forwards += other.forwards
        self.applied_timestamps_ms = np.concatenate(
            [self.applied_timestamps_ms, other.applied_timestamps_ms]
        )
        self.duplicates += other.duplicates
        self.handed_over += other.handed_over


def stream_file_name(
    topic: str, partition: int, first: int, last: int, epoch: int | None = None
) -> str:
    """The offline file of a checkpoint; the writer's epoch (if any) comes before the offsets,
    which stay last, so `_remove_unlogged_files` reads the first offset the same way."""
    owner = "" if epoch is None else f"e{epoch:020d}-"
    return f"stream-{topic}-{partition}-{owner}{first:020d}-{last:020d}.parquet"


class PartitionTask:
    def __init__(
        self,
        topology: Topology,
        stage: Stage,
        partition: int,
        log_root: Path,
        validator: EventValidator,
        sources: int = 1,
        cold_start: ColdStart | None = None,
        partitions: int = 1,
        topic_id: str | None = None,
    ) -> None:
        """`sources`: how many source partitions feed this partition (repartition stages).
        `cold_start`: where a partition without a log takes its state over from, `partitions`
        the partition count of its topic (which keys are its own); `topic_id`: the broker's id
        of the topic, recorded with each checkpoint."""
        self.topology = topology
        self.stage = stage
        self.partition = partition
        self.log = PartitionLog(log_root, stage.topic, partition)
        self.validator = validator
        self.lateness_us = duration_us(topology.lateness)
        self.future_skew_us = duration_us(topology.max_future_skew)
        self.states = {v.name: WindowState(v.aggregations, topology.lateness) for v in stage.views}
        self.retention_us = max(
            (s.retention_us for s in self.states.values()), default=self.lateness_us
        )
        self.sources = 1 if stage.is_source else sources
        # Newest event time per source partition ("" for the source stage's own partition):
        # each input is in order on its own, so lateness is judged per input.
        self.watermarks: dict[str, int] = {}
        self.source_offsets: dict[str, int] = {}
        self.cold_start = cold_start
        self.partitions = partitions
        self.topic_id = topic_id
        self.logged_topic_id: str | None = None  # the id the log was written with
        self.last_record_digest: str | None = None  # of the newest record processed (worker's)
        self.logged_last_record: str | None = None  # the digest the log ends with
        self.handover_us: int | None = None
        self._reset()

    @property
    def watermark(self) -> int:
        """Newest event time applied."""
        return max(self.watermarks.values(), default=NO_WATERMARK)

    def _state_watermark(self) -> int:
        """Where the window state may evict up to: the oldest input's watermark.

        Until every input has been seen, nothing is evicted: an unseen input may still bring
        events as old as the oldest seen.
        """
        if len(self.watermarks) < self.sources:
            return NO_WATERMARK
        return min(self.watermarks.values())

    def _reset(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self._events: list[pa.Table] = []
        self._rows: dict[str, list[pa.Table]] = {v.name: [] for v in self.stage.views}

    @property
    def pending(self) -> bool:
        """Whether records were processed since the last checkpoint."""
        return self.first is not None

    # --- restore -------------------------------------------------------------------------

    def restore(self) -> int | None:
        """Rebuild the state from the log; returns the offset to resume at (None: no log yet)."""
        high = self.log.high_water()
        self._remove_unlogged_files(high)
        metadata = self.log.metadata()
        self.source_offsets = metadata.get("source_offsets", {})
        self.watermarks = metadata.get("watermarks", {})
        self.logged_topic_id = metadata.get("topic_id")
        self.logged_last_record = metadata.get("last_record")
        self.handover_us = metadata.get("handover_us") if high is not None else self._hand_over()
        seed = self.log.seed()
        events = [t for t in self.log.events() if t.num_rows]
        # The seed is older than every logged event: loaded first, it keeps the arrival order;
        # the state watermark is only set by the last load (an earlier one would refuse the rest).
        tables = ([seed] if seed is not None else []) + (
            [pa.concat_tables(events)] if events else []
        )
        for n, table in enumerate(tables, 1):
            ts = event_micros(table.column(self.topology.timestamp_field))
            watermark = self._state_watermark() if n == len(tables) else NO_WATERMARK
            for view in self.stage.views:
                state = self.states[view.name]
                keys, columns = self._window_inputs(table, view, state)
                state.load(keys, ts, columns, watermark=watermark)
        return None if high is None else high + 1

    def _hand_over(self) -> int | None:
        """No checkpoint yet: seed the log from the offline store once; returns H."""
        if self.cold_start is None:
            return None
        handover = self.cold_start.handover_us()
        if self.log.seed() is None:
            seed = self.cold_start.seed(
                self.stage.key, self.partition, self.partitions, self.retention_us, handover
            )
            if seed is not None:
                self.log.write_seed(seed, self.topology.timestamp_field)
        return handover

    def _derived_tables(self) -> list[Path]:
        tables = [v.offline.path for v in self.stage.views]
        return [self.topology.raw.path, *tables] if self.stage.is_source else tables

    def _remove_unlogged_files(self, high: int | None) -> None:
        """Offline files written after the last checkpoint by a worker that then died."""
        prefix = f"stream-{self.stage.topic}-{self.partition}-"
        for table in self._derived_tables():
            for path in table.glob(f"{offline.PARTITION}=*/*{prefix}*"):
                if path.name.startswith("."):
                    path.unlink(missing_ok=True)  # a write cut short
                    continue
                first = int(path.name.removesuffix(".parquet").rsplit("-", 2)[1])
                if high is None or first > high:
                    path.unlink(missing_ok=True)

    # --- process -------------------------------------------------------------------------

    def process(
        self, records: Sequence[Record], now_us: int | None = None,
        parsed: ParsedBatch | None = None,
    ) -> Step:
        """Apply or dead-letter every record; `now_us`: processing time (default: the clock);
        `parsed`: a source stage's records already validated (the worker validates a
        micro-batch's partitions in one call: a call has a fixed cost)."""
        step = Step()
        if not records:
            return step
        now_us = time.time_ns() // 1_000 if now_us is None else now_us
        self._contained(records, now_us, step, parsed)
        # Only now are the records applied or dead-lettered: a checkpoint may cover them.
        self.first = records[0].offset if self.first is None else self.first
        self.last = records[-1].offset
        return step

    def _contained(
        self, records: Sequence[Record], now_us: int, step: Step, parsed: ParsedBatch | None
    ) -> None:
        """`_apply` the records; if that raises, undo it and apply the halves, down to the
        single record that raises, which becomes an `internal_error` dead letter."""
        saved = self._saved()
        try:
            step.extend(self._apply(records, now_us, parsed))
            return
        except Exception as exc:  # whatever it is, one record must not stop the stream
            self._restore(saved)
            if len(records) > 1:
                middle = len(records) // 2
                halves = (None, None) if parsed is None else (
                    parsed.part(0, middle), parsed.part(middle, len(records)))
                self._contained(records[:middle], now_us, step, halves[0])
                self._contained(records[middle:], now_us, step, halves[1])
                return
            record = records[0]
            log.exception(
                "processing %s-%d offset %d raised; the record goes to the dead-letter topic",
                self.stage.topic, self.partition, record.offset,
            )
            name = type(exc).__qualname__
            if type(exc).__module__ != "builtins":
                name = f"{type(exc).__module__}.{name}"
            error = f"{name}: {exc}"
            step.dead_letters.append(
                DeadLetter(record, Rejected(INTERNAL_ERROR, f"processing raised {error}"), error)
            )

    def _saved(self) -> tuple:
        # A window state replaces its arrays rather than writing into them: a shallow copy
        # is a snapshot.
        return (
            {name: copy.copy(state) for name, state in self.states.items()},
            dict(self.watermarks),
            dict(self.source_offsets),
            len(self._events),
            {name: len(rows) for name, rows in self._rows.items()},
        )

    def _restore(self, saved: tuple) -> None:
        states, watermarks, source_offsets, events, rows = saved
        self.states, self.watermarks, self.source_offsets = states, watermarks, source_offsets
        del self._events[events:]
        for name, count in rows.items():
            del self._rows[name][count:]

    def _apply(
        self, records: Sequence[Record], now_us: int, parsed: ParsedBatch | None = None
    ) -> Step:
        step = Step()
        if self.stage.is_source:
            inputs = self._source_inputs(records, step, parsed)
        else:
            inputs = self._forwarded_inputs(records, step)
        events, index = inputs.events, inputs.index
        ts = event_micros(events.column(self.topology.timestamp_field))

        def drop(mask: np.ndarray, reject: Callable[[int], Rejected]) -> None:
            nonlocal events, index, ts
            for i in np.flatnonzero(mask):
                step.dead_letters.append(
                    DeadLetter(inputs.record(int(index[i])), reject(int(i)))
                )
            if mask.any():
                events, index, ts = events.filter(pa.array(~mask)), index[~mask], ts[~mask]

        # The source stage vets what it forwards: a later stage must not judge an event by
        # another worker's clock.
        if self.stage.is_source:
            # An entity key must be there, even where the schema lets the field be null.
            for name in dict.fromkeys([self.stage.key, *(s.key for s in self.stage.forwards)]):
                drop(
                    pc.is_null(events.column(name)).to_numpy(zero_copy_only=False),
                    _always(Rejected(WRONG_TYPE, f"{name} is null (an entity key)")),
                )
            expected = [str(k).encode() for k in events.column(self.stage.key).to_pylist()]
            message_keys = [records[int(i)].key for i in index]
            drop(
                np.fromiter((k != e for k, e in zip(message_keys, expected)), bool, len(index)),
                lambda i: Rejected(KEY_MISMATCH, _key_mismatch(self.stage.key, message_keys[i],
                                                              expected[i])),
            )
            drop(
                ts > now_us + self.future_skew_us,
                lambda i: Rejected(
                    FUTURE_TIMESTAMP,
                    f"event time {_iso(ts[i])} is more than {self.topology.max_future_skew} "
                    f"ahead of the worker's clock, {_iso(now_us)}",
                ),
            )
        # Bad messages are dead letters first; a good one at or before the hand-over point is
        # the batch job's (skipped, counted).
        after = from_stream(ts, self.handover_us)
        step.handed_over = len(ts) - int(np.count_nonzero(after))
        if step.handed_over:
            events, index, ts = events.filter(pa.array(after)), index[after], ts[after]
        sources = inputs.sources[index]
        late, newest = late_events(ts, sources, self.watermarks, self.lateness_us)
        drop(
            late,
            lambda i: Rejected(
                LATE,
                f"event time {_iso(ts[i])} is more than {self.topology.lateness} behind the "
                f"newest event time seen before it, {_iso(newest[i])}",
            ),
        )
        sources = sources[~late]
        for source in np.unique(sources):
            newest_here = int(ts[sources == source].max())
            self.watermarks[source] = max(self.watermarks.get(source, NO_WATERMARK), newest_here)

        if not len(index):
            return step
        created = datetime.now(UTC)
        for view in self.stage.views:
            state = self.states[view.name]
            keys, columns = self._window_inputs(events, view, state)
            rows = state.apply(keys, ts, columns, watermark=self._state_watermark())
            table = _feature_table(view, rows, created)
            self._rows[view.name].append(table)
            step.online.append((view, latest_per_entity(table, view)))

        self._events.append(
            events.append_column(OFFSET, pa.array(inputs.offsets[index], pa.int64()))
        )
        step.applied_timestamps_ms = inputs.timestamps_ms[index]
        for stage in self.stage.forwards:
            step.forwards.append(Forward(
                stage.topic, stage.key, events, inputs.offsets[index], step.applied_timestamps_ms
            ))
        return step

    def _source_inputs(
        self, records: Sequence[Record], step: Step, parsed: ParsedBatch | None
    ) -> _Inputs:
        """The source topic's messages, validated: one position per message."""
        if parsed is None:
            parsed = self.validator.parse_batch([r.value for r in records])
        step.dead_letters = [DeadLetter(records[i], rejected) for i, rejected in parsed.rejected]
        return _Inputs(
            parsed.events, parsed.accepted,
            np.fromiter((r.offset for r in records), np.int64, len(records)),
            np.fromiter((r.timestamp for r in records), np.int64, len(records)),
            np.full(len(records), "", dtype=object),
            lambda position: records[position],
        )

    def _forwarded_inputs(self, records: Sequence[Record], step: Step) -> _Inputs:
        """A repartition topic's messages: batches decoded as they are (their rows were
        validated by the source stage), legacy per-event messages validated; in both, what
        was applied before (a source stage's replay) is dropped."""
        legacy: list[int] = []  # positions of legacy messages that are fresh
        legacy_records: list[Record] = []
        batches: list[tuple[np.ndarray, pa.Table]] = []  # positions and fresh rows of batches
        offsets: list[np.ndarray] = []
        timestamps: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        position = 0
        for record in records:
            if repartition.is_batch(record.headers):
                try:
                    batch = repartition.decode(record.value, record.headers,
                                               self.topology.schema, self.topology.source_topic)
                except repartition.MalformedBatch as exc:
                    step.dead_letters.append(DeadLetter(record, Rejected(MALFORMED_BATCH, str(exc))))
                    continue
                fresh = repartition.fresh_rows(batch, self.source_offsets)
                count = int(np.count_nonzero(fresh))
                step.duplicates += len(fresh) - count
                if not count:
                    continue
                events = batch.events if count == len(fresh) else batch.events.filter(fresh)
                batches.append((np.arange(position, position + count), events))
                offsets.append(np.full(count, record.offset, np.int64))
                timestamps.append(batch.timestamps_ms[fresh])
                sources.append(np.full(count, batch.source, dtype=object))
                position += count
            elif _fresh_record(record, self.source_offsets):
                legacy.append(position)
                legacy_records.append(record)
                offsets.append(np.array([record.offset], np.int64))
                timestamps.append(np.array([record.timestamp], np.int64))
                headers = dict(record.headers or ())
                sources.append(np.array([headers.get(SOURCE_PARTITION, b"").decode()], object))
                position += 1
            else:
                step.duplicates += 1
        parsed = self.validator.parse_batch([r.value for r in legacy_records])
        legacy_at = np.asarray(legacy, dtype=np.int64)
        step.dead_letters += [
            DeadLetter(legacy_records[i], rejected) for i, rejected in parsed.rejected
        ]
        tables = [t for _, t in batches]
        index_parts = [p for p, _ in batches]
        if len(parsed.accepted):
            tables.append(parsed.events)
            index_parts.append(legacy_at[parsed.accepted])
        events = pa.concat_tables(tables) if tables else self.topology.schema.empty_table()
        index = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
        if legacy and batches:  # both kinds: back into consumed order
            order = np.argsort(index, kind="stable")
            events, index = events.take(pa.array(order)), index[order]
        legacy_of = {position: n for n, position in enumerate(legacy)}
        position_offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        position_timestamps = np.concatenate(timestamps) if timestamps else np.zeros(0, np.int64)

        def record_of(position: int) -> Record:
            if position in legacy_of:
                return legacy_records[legacy_of[position]]
            row = int(np.searchsorted(index, position))  # `events` is in position order
            return self._row_record(events, row, int(position_offsets[position]),
                                    int(position_timestamps[position]))

        return _Inputs(
            events, index, position_offsets, position_timestamps,
            np.concatenate(sources) if sources else np.zeros(0, dtype=object), record_of,
        )

    def _row_record(self, events: pa.Table, row: int, offset: int, timestamp_ms: int) -> Record:
        key, value = next(event_messages(events.slice(row, 1), self.stage.key))
        return RowRecord(offset, timestamp_ms, key, value, ())

    def _window_inputs(
        self, events: pa.Table, view: ViewDefinition, state: WindowState
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        keys = events.column(view.join_keys[0].name).to_numpy(zero_copy_only=False)
        columns = {
            c: events.column(c).to_numpy(zero_copy_only=False) for c in state.columns
        }
        return keys, columns

    # --- checkpoint ----------------------------------------------------------------------

    def checkpoint(self) -> int | None:
        """Make everything processed durable; returns the next offset to consume (None: idle).

        The caller must have made the online writes and the Kafka sends durable first.
        """
        snapshot = self.snapshot()
        return None if snapshot is None else snapshot.write()

    def snapshot(self) -> Snapshot | None:
        """What a checkpoint makes durable, taken out of the task (None: nothing processed).

        The task goes on processing; the snapshot is written later, by `Snapshot.write` on
        any thread, before the partition's next snapshot is written.
        """
        if self.first is None or self.last is None:
            return None
        state_watermark = self._state_watermark()
        snapshot = Snapshot(
            topology=self.topology,
            stage=self.stage,
            log=self.log,
            first=self.first,
            last=self.last,
            events=self._events,
            rows=self._rows,
            # Copies: the task keeps advancing its own.
            metadata={"source_offsets": dict(self.source_offsets),
                      "watermarks": dict(self.watermarks), "handover_us": self.handover_us,
                      "topic_id": self.topic_id, "last_record": self.last_record_digest},
            prune_before_us=None if state_watermark == NO_WATERMARK
            else state_watermark - self.retention_us,
        )
        self._reset()
        return snapshot


@dataclass
class Snapshot:
    """One partition's checkpoint: the records [first, last] processed since the last one."""

    topology: Topology
    stage: Stage
    log: PartitionLog
    first: int
    last: int
    events: list[pa.Table]
    rows: dict[str, list[pa.Table]]
    metadata: dict
    prune_before_us: int | None

    def write(self, before_log: Callable[[], None] | None = None) -> int:
        """Offline files (raw archive and feature tables), then the partition log, the commit
        point; returns the next offset to consume. `before_log` runs in between.

        Raises fencing.Fenced, having removed the offline files it wrote, when another owner
        took the partition or wrote its log meanwhile (streaming.fencing).
        """
        self.log.check_epoch()
        # The epoch in the name: a fenced writer removes its own files, never an owner's.
        name = stream_file_name(
            self.stage.topic, self.log.partition, self.first, self.last, self.log.epoch
        )
        # No events when every record since the last checkpoint was dead-lettered: the log
        # still records how far the partition got.
        events = pa.concat_tables(
            self.events
            or [self.topology.schema.empty_table().append_column(OFFSET, pa.array([], pa.int64()))]
        )
        written: list[Path] = []
        try:
            if self.stage.is_source:
                archive = events.drop_columns([OFFSET]).cast(self.topology.schema)
                written += offline.write_days(
                    self.topology.raw.path, archive, self.topology.timestamp_field, name
                )
            for view in self.stage.views:
                if self.rows[view.name]:
                    rows = _newest_per_key_and_time(pa.concat_tables(self.rows[view.name]), view)
                    written += offline.write_days(
                        view.offline.path, rows, view.offline.timestamp_field, name
                    )
            if before_log is not None:
                before_log()
            self.log.append(
                self.first, self.last, events, self.topology.timestamp_field, self.metadata
            )
        except (fencing.Fenced, LogOverlap) as exc:
            if self.log.epoch is None:
                raise  # a single owner: an overlap is a bug, not a race
            for path in written:
                path.unlink(missing_ok=True)
            raise fencing.Fenced(str(exc)) from exc
        if self.prune_before_us is not None:
            self.log.prune(self.prune_before_us)
        return self.last + 1


def fresh_records(
    records: Sequence[Record], source_offsets: dict[str, int]
) -> tuple[list[Record], int]:
    """Legacy per-event records not yet applied, and how many were not: a source stage that
    crashed may have forwarded some twice. `source_offsets` (newest offset applied per source
    partition) is advanced past the fresh ones."""
    fresh = [record for record in records if _fresh_record(record, source_offsets)]
    return fresh, len(records) - len(fresh)


def _fresh_record(record: Record, source_offsets: dict[str, int]) -> bool:
    """Whether a legacy per-event record is past what was applied from its source partition
    (one without the source headers always is); advances `source_offsets` if so."""
    headers = dict(record.headers or ())
    source_header = headers.get(SOURCE_PARTITION)
    if source_header is None or SOURCE_OFFSET not in headers:
        return True
    source, offset = source_header.decode(), int(headers[SOURCE_OFFSET])
    if offset > source_offsets.get(source, -1):
        source_offsets[source] = offset
        return True
    return False


def late_events(
    ts: np.ndarray, sources: np.ndarray, watermarks: Mapping[str, int], lateness_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which events trail the newest earlier event of their input by more than the lateness.

    `sources` names each event's input, `watermarks` the newest event time applied per input
    before this batch. Decided per event in offset order, so it does not depend on how records
    are batched. Returns the mask and, per event, the newest event time before it.
    """
    newest = np.empty(len(ts), dtype=np.int64)
    for source in np.unique(sources):
        at = np.flatnonzero(sources == source)
        start = watermarks.get(source, NO_WATERMARK)
        newest[at] = np.maximum.accumulate(np.concatenate(([start], ts[at][:-1])))
    late = np.zeros(len(ts), dtype=bool)
    known = newest != NO_WATERMARK
    late[known] = ts[known] < newest[known] - lateness_us
    return late, newest


def _always(rejected: Rejected) -> Callable[[int], Rejected]:
    return lambda _: rejected


def _key_mismatch(field: str, key: bytes | None, expected: bytes) -> str:
    if key is None:
        return f"the message has no key; it must be the event's {field}, {expected!r}"
    return f"message key {key[:100]!r} is not the event's {field}, {expected!r}"


def _iso(micros: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))).isoformat()


def _feature_table(view: ViewDefinition, rows: FeatureRows, created: datetime) -> pa.Table:
    """Feature rows in the offline table's layout: keys, event time, features, created."""
    key = view.join_keys[0]
    n = len(rows)
    columns = {
        key.name: pa.array(rows.keys, from_feast_to_pyarrow_type(key.dtype)),
        view.offline.timestamp_field: pa.array(rows.ts, pa.timestamp("us", tz="UTC")),
    }
    types = {f.name: from_feast_to_pyarrow_type(f.dtype) for f in view.features}
    for aggregation in view.aggregations:
        values = rows.features[aggregation.name]
        columns[aggregation.name] = pa.array(values, types[aggregation.name], from_pandas=True)
    if view.offline.created_timestamp_column:
        columns[view.offline.created_timestamp_column] = pa.array(
            [created] * n, pa.timestamp("us", tz="UTC")
        )
    return pa.table(columns)


def _newest_per_key_and_time(rows: pa.Table, view: ViewDefinition) -> pa.Table:
    """The last row of each (entity, event time): a corrected row replaces the rows before it."""
    keys = rows.column(view.join_keys[0].name).to_numpy(zero_copy_only=False)
    ts = event_micros(rows.column(view.offline.timestamp_field))
    order = np.lexsort((np.arange(len(ts)), ts, keys))
    keys, ts = keys[order], ts[order]
    last = np.ones(len(ts), dtype=bool)
    last[:-1] = (keys[1:] != keys[:-1]) | (ts[1:] != ts[:-1])
    return rows.take(pa.array(order[last]))
