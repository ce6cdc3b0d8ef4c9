"""Sends tables of events into Kafka, at a given rate or as fast as possible.

Events are sent in the tables' order (the fraud example's generator's is event time) as JSON in the stream
source's declared schema (timestamps as ISO-8601 UTC), keyed by the source's message key so all
events of an entity land in one partition, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from kafka import KafkaProducer  # built by `streaming.kafka.producer`

SEND_CHUNK = 1_000


def event_messages(table: pa.Table, key: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) per row; timestamps become ISO-8601 strings with a UTC offset."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            # Arrow's %S of a microsecond timestamp already prints the fraction (SS.ffffff).
            column = pc.strftime(
                column.cast(pa.timestamp("us", tz="UTC")), "%Y-%m-%dT%H:%M:%S+00:00"
            )
        columns[name] = column.to_pylist()
    keys = columns[key]
    names = list(columns)
    for i, rows in enumerate(zip(*columns.values())):
        yield str(keys[i]).encode(), json.dumps(dict(zip(names, rows))).encode()


class RateLimiter:
    """Sleeps so that `n` events take at least `n / rate` seconds overall."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.perf_counter()
        self.sent = 0

    def wait(self, events: int) -> None:
        self.sent += events
        if self.rate:
            ahead = self.sent / self.rate - (time.perf_counter() - self.started)
            if ahead > 0:
                time.sleep(ahead)


def send_events(
    producer: KafkaProducer,
    topic: str,
    tables: Iterable[pa.Table],
    key: str,
    rate: float | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send the rows of `tables` to `topic`, keyed by column `key`; returns how many were sent."""
    limiter = RateLimiter(rate)
    # With a rate, send in bursts of at most 10 ms worth of events.
    burst = SEND_CHUNK if not rate else max(1, min(SEND_CHUNK, int(rate // 100)))
    sent = 0
    for table in tables:
        if limit is not None:
            table = table.slice(0, limit - sent)
        messages = event_messages(table, key)
        for begin in range(0, table.num_rows, burst):
            chunk = min(burst, table.num_rows - begin)
            for _ in range(chunk):
                message_key, value = next(messages)
                producer.send(topic, key=message_key, value=value)
            sent += chunk
            limiter.wait(chunk)
            if progress:
                progress(chunk)
        if limit is not None and sent >= limit:
            break
    producer.flush()
    return sent
