"""Checkpoints written on the writer thread, against the real broker and Redis: the poll loop
keeps writing online rows while a checkpoint is held, a SIGKILL while one is in flight loses
and duplicates nothing, a revoke waits for it, and a write that fails stops the worker.

Each checkpoint is held by the writer's `before_log` hook (after the offline files, before the
partition log) on an Event, never by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pytest

from fraud_example.generator import GeneratorConfig
from streaming import fencing
from streaming.worker import CheckpointFailed
from tests.conftest import REDIS_URL
from tests.servers import wait_for
from tests.streaming.harness import (
    StreamRun,
    assert_same_results,
    generated_messages,
    uninterrupted_run,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def events() -> list[tuple[bytes, bytes]]:
    return generated_messages(
        GeneratorConfig(start=date(2026, 4, 1), days=2, cards=300, merchants=20, seed=11)
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, kafka_bootstrap, events) -> StreamRun:
    return uninterrupted_run(tmp_path_factory.mktemp("baseline"), kafka_bootstrap, events)


class Hold:
    """A `before_log` hook that holds the first checkpoint until released."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        if not self.held.is_set():
            self.held.set()
            self.release.wait()


def _held_worker(run: StreamRun) -> tuple[object, Hold]:
    """A worker of `run` whose first checkpoint is held."""
    worker = run.worker()
    hold = Hold()
    worker.checkpoints.before_log = hold
    return worker, hold


def _revoking_while_held(worker, hold: Hold) -> threading.Event:
    """Set once `worker` begins a revoke while its checkpoint is held."""
    revoking = threading.Event()
    revoke = worker.revoke

    def revoke_once_held(tps) -> None:
        if hold.held.is_set():
            revoking.set()
        revoke(tps)

    worker.revoke = revoke_once_held
    return revoking


def _checkpoints(worker) -> float:
    return worker.metrics.registry.get_sample_value("featurestore_stream_checkpoints_total") or 0


def test_online_writes_continue_while_a_checkpoint_is_held(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    worker, hold = _held_worker(run)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        run.send(events[:100])
        wait_for(hold.held.is_set, 120, "a checkpoint to be held")
        checkpoints = _checkpoints(worker)
        # Every later event becomes readable in Redis while the checkpoint stays held.
        run.send(events[100:])
        wait_for(lambda: run.online() == baseline.online() or not thread.is_alive(), 120,
                 "every event to be online")
        assert thread.is_alive()
        assert _checkpoints(worker) == checkpoints
    finally:
        hold.release.set()
    run.wait_checkpointed(worker)
    worker.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert_same_results(run, baseline)


@pytest.mark.heavy
def test_sigkill_during_a_held_checkpoint_and_restart_equal_an_uninterrupted_run(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    run.send(events)
    held = subprocess.Popen(
        [sys.executable, "-m", "tests.streaming.blocked_checkpoint"],
        env={**os.environ, **run.env}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert held.stdout is not None
        assert held.stdout.readline() == b"blocked\n"
        # Online rows past the held checkpoint land too: the replay must rewrite them as they are.
        wait_for(lambda: run.online() == baseline.online() or held.poll() is not None, 120,
                 "every event to be online")
        assert held.poll() is None
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait()
    run.resume_to_end()
    assert_same_results(run, baseline)


def test_a_revoke_waits_for_the_checkpoint_in_flight(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    first, hold = _held_worker(run)
    revoking = _revoking_while_held(first, hold)
    first_thread = threading.Thread(target=first.run, daemon=True)
    first_thread.start()
    try:
        run.send(events[: len(events) // 2])
        wait_for(hold.held.is_set, 120, "a checkpoint to be held")
        second, second_thread = run.start()  # a rebalance: the first worker revokes
        wait_for(revoking.is_set, 120, "the revoke")
        assert first.checkpoints.busy  # the revoke waits for it: nothing handed over yet
    finally:
        hold.release.set()
    wait_for(lambda: first.tasks and second.tasks, 120, "both workers to hold partitions")
    run.send(events[len(events) // 2:])
    run.wait_checkpointed(first)
    for worker, thread in ((second, second_thread), (first, first_thread)):
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert_same_results(run, baseline)


def test_a_revoke_whose_checkpoint_is_fenced_forgets_the_partitions_without_error(
    tmp_path, kafka_bootstrap, events, baseline, caplog
) -> None:
    """The checkpoint a revoke waits for is fenced (another owner took every partition's epoch
    meanwhile): the fenced partitions are forgotten there, and the revoke's own forgetting
    of them is no error (it raised KeyError, and kafka-python failed the poll with it)."""
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    first, hold = _held_worker(run)
    revoking = _revoking_while_held(first, hold)
    failures: list[BaseException] = []

    def run_first() -> None:
        try:
            first.run()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    first_thread = threading.Thread(target=run_first, daemon=True)
    first_thread.start()
    try:
        run.send(events[: len(events) // 2])
        wait_for(hold.held.is_set, 120, "a checkpoint to be held")
        for task in list(first.tasks.values()):
            fencing.take(task.log.directory, "another worker")
        second, second_thread = run.start()  # a rebalance: the first worker revokes
        wait_for(revoking.is_set, 120, "the revoke")
    finally:
        hold.release.set()
    wait_for(lambda: (first.tasks and second.tasks) or not first_thread.is_alive(), 120,
             "both workers to hold partitions")
    assert first_thread.is_alive(), failures
    run.send(events[len(events) // 2:])
    run.wait_checkpointed(first)
    for worker, thread in ((second, second_thread), (first, first_thread)):
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert failures == []
    assert "rebalance listener" not in caplog.text
    assert "moved to another worker" in caplog.text  # the revoke's checkpoint was fenced
    assert_same_results(run, baseline)


def test_a_checkpoint_that_cannot_be_written_stops_the_worker_naming_why(
    tmp_path, kafka_bootstrap, events
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL, partitions=1)
    with run.settings() as settings:
        log_dir = settings.stream_log_dir / run.topic / "0"
    log_dir.parent.mkdir(parents=True)
    log_dir.write_text("a file where the partition log's directory goes")
    run.send(events[:50])
    # Found when the partition is assigned (its epoch is taken in the log's directory).
    with pytest.raises(CheckpointFailed,
                       match=f"writing the partition log of {run.topic}-0 failed .*FileExistsError"):
        run.run_to_end()


def test_offline_files_that_cannot_be_written_stop_the_worker_naming_why(
    tmp_path, kafka_bootstrap, events
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL, partitions=1)
    with run.settings() as settings:
        archive = settings.raw_dir / "transactions"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_text("a file where the raw archive's directory goes")
    run.send(events[:50])
    with pytest.raises(CheckpointFailed, match="writing a checkpoint failed .*Error"):
        run.run_to_end()


class _SilentProducer:
    """A producer that takes every send and delivers none, without an error: what kafka-python
    3.0.12's does once its network thread died (a connection closed under a read)."""

    def __init__(self) -> None:
        from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

        self._future = lambda: FutureRecordMetadata(
            FutureProduceResult(None), 0, 0, 0, 0, 0, 0)
        self.flushes = 0

    def send(self, *args, **kwargs):
        return self._future()  # never resolved

    def flush(self, timeout=None) -> None:
        from kafka.errors import KafkaTimeoutError

        self.flushes += 1
        raise KafkaTimeoutError("Timeout after waiting for the flush")

    def close(self, timeout=None) -> None:
        self.closed = True

    @property
    def _sender(self):  # what kafka.close_producer stops when sends are unacknowledged
        return self

    def force_close(self) -> None:
        self.forced = True


@pytest.mark.heavy  # ~28 s: three checkpoints postponed, then the whole run again
def test_a_producer_that_delivers_nothing_is_replaced_and_nothing_is_lost(
    tmp_path, kafka_bootstrap, events, baseline, caplog
) -> None:
    """Defect: a worker whose producer stopped delivering (the repartition poison test, at load
    7) postponed its checkpoints for good, and its forwards never reached the next stage."""
    from streaming.worker import StreamWorker

    silent = _SilentProducer()
    made = []

    class Worker(StreamWorker):
        def _new_producer(self):
            made.append(None)
            return silent if len(made) == 1 else super()._new_producer()

    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    with run.settings() as settings:
        from featurestore.feast_config import feature_store

        worker = Worker(settings, feature_store(settings))
    run.send(events)
    run.run_to_end(worker)
    assert len(made) == 2 and silent.flushes >= 3 and silent.forced and silent.closed
    assert "replacing its producer" in caplog.text
    assert_same_results(run, baseline)
