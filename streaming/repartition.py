"""The repartition topic's message format: validated, typed events as Arrow IPC batches.

The source stage forwards, per micro-batch and target partition, one Arrow IPC stream (one
record batch) of the accepted events in the topology's schema, plus two columns: the source
offset and the source Kafka timestamp of each event. Its headers name the format
(`FORMAT` = `arrow-ipc/1`) and the source range: topic, partition, the first and the last
source offset of its rows (they are in offset order). The next stage decodes the columns
directly: no JSON, no validation of rows the source stage already validated.

Exactly-once effect: the next stage keeps the newest source offset applied per source
partition and applies only the rows past it (`fresh_rows`), so a batch forwarded again after
a crash or a rewind, whole or overlapping, has its effect once.

A batch that would exceed the topic's message size limit is sent as several messages, each a
contiguous offset range of its own. A message without the format header is a legacy per-event
JSON message (what workers before this format sent): still accepted, deduplicated by its
per-event source headers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming.coldstart import partition_of

FORMAT_HEADER = "featurestore-format"
FORMAT = b"arrow-ipc/1"
SOURCE_TOPIC = "featurestore-source-topic"
SOURCE_PARTITION = "featurestore-source-partition"
SOURCE_FIRST_OFFSET = "featurestore-source-first-offset"
SOURCE_LAST_OFFSET = "featurestore-source-last-offset"
# The columns a batch carries besides the events' own.
SOURCE_OFFSET_COLUMN = "_source_offset"
SOURCE_TIMESTAMP_COLUMN = "_source_timestamp_ms"


class MalformedBatch(ValueError):
    """A message claiming the batch format that is not a batch of the expected schema."""


@dataclass(frozen=True)
class BatchMessage:
    """One message to send to a repartition topic."""

    partition: int
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


@dataclass(frozen=True)
class Batch:
    """A decoded batch: `events` in the topology's schema, and per row its source offset and
    source Kafka timestamp."""

    source: str  # the source partition, as the legacy header spells it
    first: int
    last: int
    events: pa.Table
    offsets: np.ndarray
    timestamps_ms: np.ndarray


def batch_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(SOURCE_OFFSET_COLUMN, pa.int64())).append(
        pa.field(SOURCE_TIMESTAMP_COLUMN, pa.int64())
    )


def encode(
    events: pa.Table,
    offsets: np.ndarray,
    timestamps_ms: np.ndarray,
    *,
    key: str,
    source_topic: str,
    source_partition: int,
    partitions: int,
    limit: int,
) -> list[BatchMessage]:
    """The messages forwarding `events` (consumed at `offsets`, ascending) to a topic of
    `partitions` partitions keyed by column `key`: per target partition, one message, or
    several when one would exceed `limit` bytes (value and headers)."""
    if not events.num_rows:
        return []
    table = events.append_column(SOURCE_OFFSET_COLUMN, pa.array(offsets, pa.int64()))
    table = table.append_column(SOURCE_TIMESTAMP_COLUMN, pa.array(timestamps_ms, pa.int64()))
    keys = events.column(key).to_numpy(zero_copy_only=False)
    # Kafka's default partitioner, once per distinct key: a legacy per-event message of the
    # same key went to the same partition, and the cold start seeds by the same rule.
    distinct, inverse = np.unique(keys, return_inverse=True)
    targets = np.array([partition_of(k, partitions) for k in distinct], np.int64)[inverse]
    order = np.argsort(targets, kind="stable")  # stable: rows stay in offset order
    table, targets = table.take(pa.array(order)), targets[order]
    bounds = np.flatnonzero(np.diff(targets)) + 1
    messages = []
    for start, stop in zip([0, *bounds.tolist()], [*bounds.tolist(), len(targets)]):
        part = table.slice(start, stop - start)
        messages += _fitted(part, int(targets[start]), source_topic, source_partition, limit)
    return messages


def _fitted(
    rows: pa.Table, partition: int, source_topic: str, source_partition: int, limit: int
) -> list[BatchMessage]:
    """`rows` as one message, or halved until each part fits `limit`."""
    offsets = rows.column(SOURCE_OFFSET_COLUMN)
    headers = [
        (FORMAT_HEADER, FORMAT),
        (SOURCE_TOPIC, source_topic.encode()),
        (SOURCE_PARTITION, b"%d" % source_partition),
        (SOURCE_FIRST_OFFSET, b"%d" % offsets[0].as_py()),
        (SOURCE_LAST_OFFSET, b"%d" % offsets[-1].as_py()),
    ]
    value = _ipc(rows)
    if len(value) + sum(len(n) + len(v) for n, v in headers) > limit:
        if rows.num_rows == 1:
            raise ValueError(
                f"one event encodes to {len(value)} bytes, more than the repartition topic's "
                f"message limit of {limit} bytes"
            )
        middle = rows.num_rows // 2
        return _fitted(rows.slice(0, middle), partition, source_topic, source_partition, limit) + (
            _fitted(rows.slice(middle), partition, source_topic, source_partition, limit)
        )
    newest = pc.max(rows.column(SOURCE_TIMESTAMP_COLUMN)).as_py()
    return [BatchMessage(partition, value, headers, newest)]


def _ipc(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows.combine_chunks())
    return sink.getvalue().to_pybytes()


def is_batch(headers: object) -> bool:
    """Whether a message with `headers` claims the batch format (of any version)."""
    return any(name == FORMAT_HEADER for name, _ in headers or ())  # type: ignore[attr-defined]


def decode(value: bytes | None, headers: object, schema: pa.Schema, source_topic: str) -> Batch:
    """The batch a message holds; raises MalformedBatch naming what is wrong."""
    named = dict(headers or ())  # type: ignore[call-overload]
    if named.get(FORMAT_HEADER) != FORMAT:
        raise MalformedBatch(f"unknown repartition format {named.get(FORMAT_HEADER)!r}, "
                             f"this worker reads {FORMAT!r}")
    if named.get(SOURCE_TOPIC) != source_topic.encode():
        raise MalformedBatch(f"source topic {named.get(SOURCE_TOPIC)!r} is not {source_topic!r}")
    try:
        source = named[SOURCE_PARTITION].decode()
        first, last = int(named[SOURCE_FIRST_OFFSET]), int(named[SOURCE_LAST_OFFSET])
        int(source)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise MalformedBatch(f"the source range headers are missing or not numbers ({exc})") \
            from exc
    if value is None:
        raise MalformedBatch("the message has no value")
    try:
        with pa.ipc.open_stream(value) as reader:
            table = reader.read_all()
    except (pa.ArrowException, OSError) as exc:
        raise MalformedBatch(f"not an Arrow IPC stream ({exc})") from exc
    if not table.schema.equals(batch_schema(schema)):
        raise MalformedBatch(f"the batch's schema is not the topic's: {table.schema}")
    offsets = table.column(SOURCE_OFFSET_COLUMN).to_numpy()
    if not len(offsets) or offsets[0] != first or offsets[-1] != last or (
        np.any(np.diff(offsets) <= 0)
    ):
        raise MalformedBatch(f"the rows' source offsets are not the range {first}..{last} in "
                             "ascending order")
    timestamps = table.column(SOURCE_TIMESTAMP_COLUMN).to_numpy()
    events = table.drop_columns([SOURCE_OFFSET_COLUMN, SOURCE_TIMESTAMP_COLUMN])
    return Batch(source, first, last, events, offsets, timestamps)


def fresh_rows(batch: Batch, source_offsets: dict[str, int]) -> np.ndarray:
    """Which rows of `batch` are past the newest source offset applied from its source
    partition; `source_offsets` is advanced past them."""
    applied = source_offsets.get(batch.source, -1)
    if batch.last > applied:
        source_offsets[batch.source] = batch.last
    return batch.offsets > applied
