"""Cold start: a partition with no log takes its window state over from the offline store.

The hand-over point H of a source topic is the newest event time in the source's raw archive
(the table the Spark backfill reads) when a partition of that topic is first assigned without
a partition log. It is fixed once per deployment in `<log root>/<source topic>/handover.json`,
so every partition and every worker hands over at the same instant:

- events at or before H come from batch: each partition seeds its window state with the
  archived events of its keys in (H - longest window - lateness, H];
- events after H come from the stream;
- a stream event at or before H (one the archive holds, or could have held) is skipped:
  counted, not applied, not archived. So the archive holds each event once and the Spark job
  over it computes exactly the rows the stream wrote.

Only the batch data counts: files a stream worker wrote (`stream-*`, see
`streaming.task.stream_file_name`) are the stream's own output, in its partition logs; so a
partition that starts cold next to partitions already streaming hands over at the batch's end,
not at their progress. (`stream reset` renames a reset topic's files, making them batch data.)

A partition's keys are those Kafka's default partitioner (murmur2 of the key's text, as
`stream produce` and Kafka clients send them) maps to it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from kafka.partitioner.default import murmur2

from featurestore import offline
from featurestore.online.feast_layout import event_micros
from streaming.topology import Topology

HANDOVER_FILE = "handover.json"
STREAM_FILES = "stream-"


def batch_files(files: list[Path]) -> list[Path]:
    return [f for f in files if not f.name.startswith(STREAM_FILES)]


def from_stream(ts_us: np.ndarray, handover_us: int | None) -> np.ndarray:
    """Which events the stream applies: those after the hand-over point (all, without one)."""
    if handover_us is None:
        return np.ones(len(ts_us), dtype=bool)
    return np.asarray(ts_us) > handover_us


def in_seed(ts_us: np.ndarray, handover_us: int, retention_us: int) -> np.ndarray:
    """Which archived events a cold partition is seeded with: those in (H - retention, H].

    Every window of a stream event (after H) reaches back less than the longest window from
    it, so these are all the batch events any stream row can see.
    """
    ts_us = np.asarray(ts_us)
    return (ts_us > handover_us - retention_us) & (ts_us <= handover_us)


def partition_of(key: object, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message keyed by `key`'s text."""
    return (murmur2(str(key).encode()) & 0x7FFFFFFF) % partitions


def newest_event_us(table: Path, timestamp_field: str) -> int | None:
    """The newest event time (µs) of a day-partitioned table's batch files; None: no event."""
    days = sorted(table.glob(f"{offline.PARTITION}=*"), reverse=True) if table.is_dir() else []
    for day in days:
        files = batch_files(sorted(day.glob("*.parquet")))
        stamps = [event_micros(pq.read_table(f, columns=[timestamp_field]).column(0))
                  for f in files]
        stamps = [s for s in stamps if len(s)]
        if stamps:
            return int(max(s.max() for s in stamps))
    return None


def _day(micros: int):
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).date()


@dataclass(frozen=True)
class ColdStart:
    """The hand-over of one source topic's topology, shared by all its stages' partitions."""

    topology: Topology
    log_root: Path

    @property
    def path(self) -> Path:
        return Path(self.log_root) / self.topology.source_topic / HANDOVER_FILE

    def handover_us(self) -> int | None:
        """H: read from the hand-over file, or fixed now from the raw archive (first caller wins)."""
        if not self.path.exists():
            newest = newest_event_us(self.topology.raw.path, self.topology.timestamp_field)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{HANDOVER_FILE}.{os.getpid()}.{id(self)}.tmp")
            tmp.write_text(json.dumps({"handover_us": newest}))
            # A link fails if another worker fixed H first; then its H is the one.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
            tmp.unlink()
        return json.loads(self.path.read_text())["handover_us"]

    def seed(
        self, key: str, partition: int, partitions: int, retention_us: int, handover_us: int | None
    ) -> pa.Table | None:
        """The archived events of the partition's keys in (H - retention, H], in time order."""
        if handover_us is None:
            return None
        raw = self.topology.raw
        first_day = _day(handover_us - retention_us)
        files = batch_files(offline.data_files(
            raw, first_day, _day(handover_us) + timedelta(days=1), required=False
        ))
        schema = self.topology.schema
        offline.validate_files(files, raw, schema)  # an error naming the file, not a crash
        tables = [pq.read_table(f, columns=schema.names).cast(schema) for f in files]
        if not tables:
            return None
        events = pa.concat_tables(tables)
        ts = event_micros(events.column(self.topology.timestamp_field))
        keys = events.column(key).to_pylist()
        codes = {k: partition_of(k, partitions) for k in set(keys)}
        mine = np.fromiter((codes[k] == partition for k in keys), bool, len(keys))
        keep = mine & in_seed(ts, handover_us, retention_us)
        events = events.filter(pa.array(keep))
        order = np.argsort(event_micros(events.column(self.topology.timestamp_field)),
                           kind="stable")
        return events.take(pa.array(order)) if events.num_rows else None
