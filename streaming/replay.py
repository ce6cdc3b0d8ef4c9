"""Replays a file of events into a stream source's topic, as the stream worker expects them.

The file is Parquet or JSON lines (`.jsonl`, `.ndjson`, `.json`: one JSON object a line) whose
rows are events in the source's declared schema. Each row becomes one message: its value the
event as JSON (timestamps ISO-8601 with a UTC offset), its key the event's `message_key` field as
text, exactly as the worker checks it. Rows are sent in file order: the worker applies events in
the order of their partition, and drops the ones later than the source's lateness allows.

Every row is checked by the worker's own validator (fields, types, ranges, timestamps) before
anything is sent, so a file either goes whole or not at all; an error names the row and the
problem. What only the worker can judge (an event too far ahead of its clock, or late) is its
to dead-letter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from kafka import KafkaProducer

from featurestore.errors import InputDataError, UnknownNameError
from streaming.producer import SEND_CHUNK, RateLimiter, event_messages
from streaming.topology import Topology
from streaming.validation import EventValidator, Rejected

JSON_LINES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Replay:
    """The messages of one file for one source topic, all valid, in file order."""

    topic: str
    messages: list[tuple[bytes, bytes]]


def choose_topology(topologies: list[Topology], topic: str | None) -> Topology:
    """The topology of source topic `topic`; without one, the repo's only stream source."""
    by_topic = {t.source_topic: t for t in topologies}
    if topic is None:
        if len(by_topic) == 1:
            return topologies[0]
        raise UnknownNameError(
            f"the repo has {len(by_topic)} stream source topics ({', '.join(sorted(by_topic))}); "
            "name one with --topic"
        )
    if topic not in by_topic:
        raise UnknownNameError(
            f"no stream source reads topic {topic!r}; the repo's source topics: "
            f"{', '.join(sorted(by_topic))}"
        )
    return by_topic[topic]


def replay(path: Path, topology: Topology, key: str, max_bytes: int) -> Replay:
    """The messages of file `path` for `topology`'s source topic, keyed by event field `key`.

    Raises InputDataError naming the first row (1-based; for JSON lines, the line) that the
    worker would reject, and why.
    """
    validator = EventValidator(
        topology.schema, max_bytes, topology.ranges, topology.timestamp_range
    )
    if path.suffix.lower() in JSON_LINES:
        labelled = _json_lines(path)
    else:
        rows = event_messages(_parquet(path, topology.schema), key)
        labelled = [(f"row {i}", value) for i, (_, value) in enumerate(rows, start=1)]
    messages = []
    for where, value in labelled:
        event = validator.parse(value)
        if isinstance(event, Rejected):
            raise InputDataError(
                f"{path} {where}: {event.detail} ({event.reason}); nothing was sent: every row "
                f"must fit the schema of topic {topology.source_topic!r}: "
                f"{_described(topology.schema)}"
            )
        # The key the worker expects: the typed event's field as text.
        messages.append((str(event[key]).encode(), value))
    return Replay(topology.source_topic, messages)


def send(
    producer: KafkaProducer,
    replayed: Replay,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Sends the messages in order, at most `rate` a second; returns how many were sent."""
    limiter = RateLimiter(rate)
    # With a rate, send in bursts of at most 10 ms worth of events.
    burst = SEND_CHUNK if not rate else max(1, min(SEND_CHUNK, int(rate // 100)))
    for begin in range(0, len(replayed.messages), burst):
        chunk = replayed.messages[begin : begin + burst]
        for key, value in chunk:
            producer.send(replayed.topic, key=key, value=value)
        limiter.wait(len(chunk))
        if progress:
            progress(len(chunk))
    producer.flush()
    return len(replayed.messages)


def _parquet(path: Path, schema: pa.Schema) -> pa.Table:
    """The file's columns in the declared order and types; a missing or extra column is named."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"{path} is not a readable Parquet file ({exc})") from None
    missing = [name for name in schema.names if name not in table.column_names]
    extra = [name for name in table.column_names if name not in schema.names]
    if missing or extra:
        raise InputDataError(
            f"{path}: "
            + "; ".join(
                part
                for part in (
                    f"lacks column(s) {', '.join(missing)}" if missing else "",
                    f"has column(s) {', '.join(extra)} the schema does not declare" if extra else "",
                )
                if part
            )
            + f"; the declared schema: {_described(schema)}"
        )
    columns = []
    for field in schema:
        column = table.column(field.name)
        if pa.types.is_timestamp(field.type) != pa.types.is_timestamp(column.type):
            raise InputDataError(
                f"{path}: column {field.name!r} is {column.type}, the schema declares {field.type}"
            )
        if not pa.types.is_timestamp(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputDataError(
                    f"{path}: column {field.name!r} is {column.type} and does not fit the "
                    f"declared {field.type}: {exc}"
                ) from None
        columns.append(column)
    return pa.table(columns, names=schema.names)


def _json_lines(path: Path) -> list[tuple[str, bytes]]:
    """Each non-empty line, named by its number: sent as written."""
    with path.open("rb") as lines:
        return [
            (f"line {number}", line.strip())
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]


def _described(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}{'' if f.nullable else ' not null'}" for f in schema)
