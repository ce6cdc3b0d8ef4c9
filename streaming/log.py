"""The partition log: the commit point of the stream worker's exactly-once effect.

For each consumed topic partition, every checkpoint appends one Parquet file holding the events
the checkpoint applied (with their offsets), named by the offsets it covers and its newest event
time: `<root>/<topic>/<partition>/<first>-<last>-<newest µs>.parquet` (zero-padded, so names
sort by offset and pruning needs only the directory listing). A file appears by rename, after
everything the checkpoint writes elsewhere is durable, so the newest file's last offset is
exactly how far the partition has been applied. On restart or reassignment the worker
rebuilds its window state from the retained files and resumes at that offset + 1; output a
crashed worker wrote past it is removed or rewritten identically by the replay.

Files whose events are all older than the window state's retention are pruned; the newest file
is always kept (it holds the high-water offset and the checkpoint's metadata).

A partition that started cold (`streaming.coldstart`) also keeps the events it was seeded with
from the offline store, in `seed-<newest µs>.parquet`: they are the oldest part of its window
state, restored before the checkpoints, and pruned like them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.offline import write_atomically
from streaming import fencing

OFFSET = "_offset"
_META = b"featurestore.checkpoint"


def _name(first: int, last: int, newest_us: int) -> str:
    return f"{first:020d}-{last:020d}-{max(newest_us, 0):020d}.parquet"


def _seed_name(newest_us: int) -> str:
    return f"seed-{max(newest_us, 0):020d}.parquet"


def _parts(path: Path) -> tuple[int, int, int]:
    first, last, newest = path.stem.split("-")
    return int(first), int(last), int(newest)


class LogOverlap(ValueError):
    """A checkpoint covers offsets the log already holds: another writer got there first."""


class PartitionLog:
    def __init__(self, root: Path, topic: str, partition: int) -> None:
        self.partition = partition
        self.directory = Path(root) / topic / str(partition)
        # The epoch this owner took (streaming.fencing); None: a single owner, never fenced.
        self.epoch: int | None = None

    def take_epoch(self, owner: str) -> None:
        """Become the partition's newest owner: an older one's checkpoints are fenced from now."""
        self.epoch = fencing.take(self.directory, owner)

    def check_epoch(self) -> None:
        """Raise fencing.Fenced if another owner took the partition since `take_epoch`."""
        if self.epoch is not None:
            fencing.check(self.directory, self.epoch)

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("[0-9]*.parquet"))

    def _seeds(self) -> list[Path]:
        return sorted(self.directory.glob("seed-*.parquet")) if self.directory.is_dir() else []

    def seed(self) -> pa.Table | None:
        """The events the partition was seeded with at its cold start, if any are retained."""
        seeds = self._seeds()
        return pq.read_table(seeds[0]) if seeds else None

    def write_seed(self, events: pa.Table, timestamp_field: str) -> None:
        newest = pc.max(events.column(timestamp_field)).cast(pa.int64()).as_py()
        write_atomically(events, self.directory / _seed_name(newest))

    def high_water(self) -> int | None:
        """The last offset applied, or None if nothing was ever checkpointed."""
        files = self._files()
        return _parts(files[-1])[1] if files else None

    def metadata(self) -> dict:
        """The newest checkpoint's metadata ({} if none)."""
        files = self._files()
        if not files:
            return {}
        stored = pq.read_schema(files[-1]).metadata or {}
        return json.loads(stored.get(_META, b"{}"))

    def events(self) -> Iterator[pa.Table]:
        """The retained checkpoints' events, oldest first, with their `_offset` column."""
        for path in self._files():
            yield pq.read_table(path)

    def append(
        self, first: int, last: int, events: pa.Table, timestamp_field: str, metadata: dict
    ) -> None:
        """Record that offsets [first, last] are applied; `events` carries an `_offset` column."""
        self.check_epoch()
        high = self.high_water()
        if high is not None and first <= high:
            raise LogOverlap(
                f"checkpoint {first}-{last} of {self.directory} overlaps the log, "
                f"which is applied up to {high}"
            )
        column = events.column(timestamp_field)
        newest = pc.max(column).cast(pa.int64()).as_py() if len(column) else None
        events = events.replace_schema_metadata({_META: json.dumps(metadata).encode()})
        write_atomically(events, self.directory / _name(first, last, newest or 0))

    def prune(self, keep_after_us: int) -> int:
        """Remove the oldest checkpoints whose events are all at or before `keep_after_us`.

        Stops at the first checkpoint to keep: accepted events trail the watermark by at most
        the allowed lateness, so later checkpoints are (almost) never older, and keeping one
        too many is harmless. Returns how many were removed.
        """
        removed = 0
        for path in self._seeds():
            if int(path.stem.removeprefix("seed-")) <= keep_after_us:
                path.unlink()
                removed += 1
        for path in self._files()[:-1]:
            if _parts(path)[2] > keep_after_us:
                break
            path.unlink()
            removed += 1
        return removed
