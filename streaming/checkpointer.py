"""The checkpoint writer: a checkpoint's file work on a thread of its own.

Writing a checkpoint (flushing the producer, the offline files, the partition log with fsync)
takes long enough to delay online writes when it runs on the poll loop. The poll thread takes
each partition's snapshot (after its online rows landed) and hands them over; the writer thread
flushes the sends and writes each snapshot, offline files then partition log, in the order
handed over; the poll thread goes on processing and writing online rows, and commits the Kafka
offsets when it collects the finished checkpoint (kafka-python's consumer is not thread-safe,
so the writer never touches it).

One checkpoint is in flight at a time: a partition's snapshots reach its log in offset order,
and a rebalance or a stop waits for the one in flight by collecting it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.errors import KafkaError

from streaming.fencing import Fenced
from streaming.task import Snapshot

Snapshots = list[tuple[TopicPartition, Snapshot]]


class SendsFailed(Exception):
    """A send to Kafka failed: what it carried must be produced again."""


class Postponed(Exception):
    """Kafka did not acknowledge the sends in time: nothing was written; the snapshots wait
    for the next checkpoint."""

    def __init__(self, snapshots: Snapshots) -> None:
        super().__init__(f"{len(snapshots)} partition snapshot(s) postponed")
        self.snapshots = snapshots


@dataclass
class Checkpointed:
    """A finished checkpoint: the next offset of each partition whose log it appended, and the
    partitions it was fenced from (another worker took them: nothing of theirs was written)."""

    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    fenced: dict[TopicPartition, Fenced] = field(default_factory=dict)


class CheckpointWriter:
    def __init__(self, flush_sends: Callable[[], None]) -> None:
        """`flush_sends`: waits for every send made so far; raises SendsFailed or KafkaError."""
        self._flush_sends = flush_sends
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._in_flight: Future[Checkpointed] | None = None
        self._collecting = threading.Lock()
        # Tests force a crash or a revoke at a known point: runs on the writer thread after a
        # snapshot's offline files, before its partition log.
        self.before_log: Callable[[], None] = _nothing

    @property
    def busy(self) -> bool:
        """Whether a checkpoint was handed over and not collected yet."""
        return self._in_flight is not None

    def submit(self, snapshots: Snapshots) -> None:
        if self._in_flight is not None:
            raise RuntimeError("a checkpoint is already in flight")
        self._in_flight = self._executor.submit(self._write, snapshots)

    def collect(self, wait: bool) -> Checkpointed | None:
        """The finished checkpoint; None when there is none, or (without `wait`) it is still
        being written. Raises what the writer raised."""
        # kafka-python may run a rebalance callback (which collects) off the poll thread.
        with self._collecting:
            future = self._in_flight
            if future is None or (not wait and not future.done()):
                return None
            try:
                return future.result()
            finally:
                self._in_flight = None  # busy until here: nothing else is handed over meanwhile

    def close(self) -> None:
        """Wait for the checkpoint in flight (its result is dropped) and end the thread."""
        self._executor.shutdown(wait=True)

    def _write(self, snapshots: Snapshots) -> Checkpointed:
        try:
            self._flush_sends()
        except KafkaError as exc:
            raise Postponed(snapshots) from exc
        done = Checkpointed()
        for tp, snapshot in snapshots:
            try:
                done.offsets[tp] = snapshot.write(before_log=self.before_log)
            except Fenced as exc:  # this partition only: the others are still ours
                done.fenced[tp] = exc
        return done


def _nothing() -> None:
    pass
