"""Zombie fencing: a worker whose partition moved to another worker writes no checkpoint of it.

The epoch rules against a naive model and across processes; one partition task's checkpoint
fenced at each of its two checks; and two real worker processes (separate data directories, one
shared offline root) through the real broker, the first paused past its session timeout while
its checkpoint is in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraud_example.generator import GeneratorConfig
from streaming import fencing
from streaming.log import PartitionLog
from streaming.task import PartitionTask
from streaming.validation import EventValidator
from tests.conftest import REDIS_URL
from tests.servers import wait_for
from tests.streaming.harness import (
    StreamRun,
    assert_same_results,
    generated_messages,
    uninterrupted_run,
)
from tests.streaming.test_task import NOW, good, records, topology  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[2]


# --- the epoch rules -----------------------------------------------------------------------


@given(st.lists(st.one_of(st.just("take"), st.integers(0, 12)), max_size=30))
def test_only_the_newest_epoch_passes_its_check(tmp_path_factory, operations) -> None:
    directory = tmp_path_factory.mktemp("epochs")
    newest = 0  # the model: a counter
    for operation in operations:
        if operation == "take":
            assert fencing.take(directory, "a test") == newest + 1
            newest += 1
        elif operation == newest:
            fencing.check(directory, operation)
        else:
            with pytest.raises(fencing.Fenced, match=f"epoch is {operation}, .* now {newest}"):
                fencing.check(directory, operation)
    assert fencing.newest(directory) == newest
    assert len(list(directory.glob("epoch-*"))) == min(newest, 1)  # older ones are removed


def _take_many(directory: str, start, count: int, taken) -> None:
    start.wait()
    mine = [fencing.take(Path(directory), f"pid {os.getpid()}") for _ in range(count)]
    assert mine == sorted(set(mine)), mine  # each owner's epochs only grow
    taken.extend(mine)


def test_concurrent_owners_never_take_the_same_epoch(tmp_path) -> None:
    context = multiprocessing.get_context("fork")  # no re-import: the takers start at once
    with context.Manager() as manager:
        start, taken = manager.Barrier(4), manager.list()
        processes = [context.Process(target=_take_many, args=(str(tmp_path), start, 25, taken))
                     for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        assert [p.exitcode for p in processes] == [0] * 4
        taken = list(taken)
    assert len(set(taken)) == len(taken) == 100  # no two owners share one
    assert fencing.newest(tmp_path) == max(taken)


# --- one partition's checkpoint --------------------------------------------------------------


def _task(topology, log_root: Path, partition: int) -> PartitionTask:  # noqa: F811
    validator = EventValidator(topology.schema, 16_384, topology.ranges, topology.timestamp_range)
    return PartitionTask(topology, topology.stages[topology.source_topic], partition, log_root,
                         validator)


def _stream_files(topology, partition: int) -> list[Path]:  # noqa: F811
    tables = [topology.raw.path, *(v.offline.path for v in topology.stages[topology.source_topic].views)]
    return [p for table in tables
            for p in table.glob(f"event_date=*/stream-{topology.source_topic}-{partition}-*")]


def _processed(task: PartitionTask, first: int = 0):
    task.process(records([good(7, NOW + timedelta(seconds=i)) for i in range(3)], first=first))
    return task.snapshot()


def test_a_checkpoint_fenced_after_its_offline_files_removes_them_and_writes_no_log(
    topology, tmp_path  # noqa: F811
) -> None:
    old = _task(topology, tmp_path, 41)
    old.log.take_epoch("the old owner")
    old.restore()
    snapshot = _processed(old)
    new = PartitionLog(tmp_path, topology.source_topic, 41)
    # The partition moves while the old owner's offline files are written, before its log.
    with pytest.raises(fencing.Fenced, match="another worker owns it"):
        snapshot.write(before_log=lambda: new.take_epoch("the new owner"))
    assert _stream_files(topology, 41) == []
    assert old.log.high_water() is None


def test_a_checkpoint_fenced_before_it_starts_writes_nothing(topology, tmp_path) -> None:  # noqa: F811
    old = _task(topology, tmp_path, 42)
    old.log.take_epoch("the old owner")
    old.restore()
    snapshot = _processed(old)
    PartitionLog(tmp_path, topology.source_topic, 42).take_epoch("the new owner")
    with pytest.raises(fencing.Fenced):
        snapshot.write(before_log=lambda: pytest.fail("nothing may be written"))
    assert _stream_files(topology, 42) == []


def test_a_checkpoint_that_finds_the_log_moved_removes_its_files(topology, tmp_path) -> None:  # noqa: F811
    owner = _task(topology, tmp_path, 43)
    owner.log.take_epoch("the owner")
    owner.restore()
    snapshot = _processed(owner)
    # An old owner that passed its last check just before the epoch moved appends first.
    late = _task(topology, tmp_path, 43)
    late.restore()
    _processed(late).write()
    late_files = _stream_files(topology, 43)
    with pytest.raises(fencing.Fenced, match="overlaps the log"):
        snapshot.write()
    assert _stream_files(topology, 43) == late_files  # its own removed, the other's kept
    assert fencing.newest(owner.log.directory) == owner.log.epoch  # still the owner: it rebuilds


def test_an_unfenced_checkpoint_names_its_files_by_epoch(topology, tmp_path) -> None:  # noqa: F811
    task = _task(topology, tmp_path, 44)
    task.log.take_epoch("the owner")
    task.restore()
    assert _processed(task).write() == 3
    files = _stream_files(topology, 44)
    assert files and all(f"-44-e{task.log.epoch:020d}-" in p.name for p in files)
    # A restart keeps what its log covers, whatever epoch wrote it.
    again = _task(topology, tmp_path, 44)
    again.log.take_epoch("the owner, restarted")
    assert again.restore() == 3
    assert _stream_files(topology, 44) == files


# --- two worker processes, one paused past its session timeout -------------------------------


def _held(run: StreamRun, data_dir: Path) -> subprocess.Popen:
    """A worker process of `run` with its own data directory whose first checkpoint holds
    after its offline files until a line arrives on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.streaming.blocked_checkpoint", "--release-on-stdin"],
        env={**os.environ, **run.env, "FEATURESTORE_DATA_DIR": str(data_dir), "COLUMNS": "200"},
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _release(worker: subprocess.Popen) -> None:
    assert worker.stdin is not None
    worker.stdin.write(b"go\n")
    worker.stdin.flush()


class Output:
    """A process's output lines, read on a thread, so a test can wait for one."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.mark.heavy
@pytest.mark.kafka
@pytest.mark.redis
def test_a_paused_worker_whose_partitions_moved_writes_no_checkpoint(
    tmp_path, kafka_bootstrap
) -> None:
    events = generated_messages(
        GeneratorConfig(start=date(2026, 4, 1), days=1, cards=200, merchants=20, seed=13)
    )
    baseline = uninterrupted_run(tmp_path / "baseline", kafka_bootstrap, events)
    # Separate data directories, one shared offline root (raw archive, offline tables, logs).
    run = StreamRun.create(tmp_path / "run", kafka_bootstrap, REDIS_URL,
                           offline_root=str(tmp_path / "shared"))
    run.send(events)
    old = _held(run, tmp_path / "machine-a")
    old_output = Output(old)
    new = None
    try:
        wait_for(lambda: old_output.has("blocked") or old.poll() is not None, 120,
                 "the first worker to hold its checkpoint")
        old.send_signal(signal.SIGSTOP)  # a pause past the session timeout: the group moves on
        new = _held(run, tmp_path / "machine-b")
        new_output = Output(new)
        # The second worker owns every partition and holds its checkpoint, not yet logged.
        wait_for(lambda: new_output.has("blocked") or new.poll() is not None, 120,
                 "the second worker to take the partitions and hold its checkpoint")
        old.send_signal(signal.SIGCONT)
        _release(old)  # the zombie's checkpoint goes on: before the fix, its log was written
        wait_for(lambda: old_output.has("moved to another worker") or old.poll() is not None,
                 60, "the first worker's checkpoint to be fenced")
        _release(new)
        run.wait_checkpointed(run.worker())
        assert old.poll() is None and new.poll() is None, "".join(old_output.lines + new_output.lines)
    finally:
        for worker in (old, new):
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.send_signal(signal.SIGKILL)
                worker.wait()
    assert_same_results(run, baseline)
    logs = list((tmp_path / "shared" / "stream").glob("*/*/*"))
    assert logs and not list((tmp_path / "machine-a").glob("stream/**/*.parquet"))
