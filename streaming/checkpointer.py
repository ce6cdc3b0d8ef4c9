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

from kafka import TopicPartition
from kafka.errors import KafkaError

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


class CheckpointWriter:
    def __init__(self, flush_sends: Callable[[], None]) -> None:
        """`flush_sends`: waits for every send made so far; raises SendsFailed or KafkaError."""
        self._flush_sends = flush_sends
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._in_flight: Future[dict[TopicPartition, int]] | None = None
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

    def collect(self, wait: bool) -> dict[TopicPartition, int] | None:
        """The finished checkpoint's next offset per partition; None when there is none, or
        (without `wait`) it is still being written. Raises what the writer raised."""
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

    def _write(self, snapshots: Snapshots) -> dict[TopicPartition, int]:
        try:
            self._flush_sends()
        except KafkaError as exc:
            raise Postponed(snapshots) from exc
        offsets = {}
        for tp, snapshot in snapshots:
            offsets[tp] = snapshot.write(before_log=self.before_log)
        return offsets


def _nothing() -> None:
    pass
