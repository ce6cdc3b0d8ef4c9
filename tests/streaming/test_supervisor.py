"""`featurestore stream run --processes N` against the real broker and Redis: N worker processes
of one group share the partitions and end where one worker ends; a failing process is restarted
with backoff, then named in the error the supervisor exits with."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from datetime import date

import pytest

from fraud_example.generator import GeneratorConfig
from streaming import supervisor as supervisor_module
from streaming.supervisor import ChildFailed, supervise
from tests.conftest import REDIS_URL
from tests.streaming.harness import (
    StreamRun,
    assert_same_results,
    generated_messages,
    uninterrupted_run,
)


@pytest.mark.heavy
@pytest.mark.kafka
@pytest.mark.redis
def test_two_processes_consume_to_the_end_as_one_worker_does(
    tmp_path_factory, kafka_bootstrap
) -> None:
    events = generated_messages(
        GeneratorConfig(start=date(2026, 5, 1), days=2, cards=300, merchants=20, seed=13)
    )
    baseline = uninterrupted_run(tmp_path_factory.mktemp("one"), kafka_bootstrap, events)
    run = StreamRun.create(tmp_path_factory.mktemp("two"), kafka_bootstrap, REDIS_URL,
                           partitions=4)
    run.send(events)
    output = run.resume_to_end(processes=2)
    assert "worker process 0 started" in output and "worker process 1 started" in output
    assert_same_results(run, baseline)


def test_a_failing_process_is_restarted_with_backoff_then_named(caplog) -> None:
    # The supervisor's rule on real child processes that fail at once (a worker with an empty
    # registry fails the same way, after paying Feast's import on every start: minutes for
    # eight starts on two cores, for the same rule). The backoff waits are real: 1 + 2 + 4 s.
    failing = [sys.executable, "-c", "import sys; sys.exit(2)"]
    caplog.set_level(logging.INFO, logger="featurestore.stream")
    with pytest.raises(ChildFailed) as failed:
        supervise(lambda index: failing, processes=2, stop=threading.Event())
    assert re.search(r"worker process [01] \(pid \d+\) exited with code 2, 4 times in a row",
                     str(failed.value))
    restarts = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    assert any("restarting it in 1 s (failure 1 of 4" in m for m in restarts), restarts
    assert any("restarting it in 2 s (failure 2 of 4" in m for m in restarts), restarts
    assert any("restarting it in 4 s (failure 3 of 4" in m for m in restarts), restarts


def test_a_process_that_exits_cleanly_is_not_restarted(caplog) -> None:
    caplog.set_level(logging.INFO, logger="featurestore.stream")
    supervise(lambda index: [sys.executable, "-c", "pass"], processes=2, stop=threading.Event())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("started" in m for m in messages) == 2, messages
    assert sum("finished" in m for m in messages) == 2, messages


def test_a_stop_drains_every_running_process() -> None:
    # Each child tells the test it runs (a line on its stdout) and then waits for SIGTERM;
    # the stop is set only once both said so, so the drain is what ends them.
    ready = threading.Semaphore(0)
    children: list[subprocess.Popen] = []
    waiting = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    stop = threading.Event()

    def command(index: int) -> list[str]:
        return [sys.executable, "-c", waiting]

    real_popen = subprocess.Popen

    def popen(args, **kwargs):  # the supervisor's own Popen, with the child's stdout piped here
        child = real_popen(args, stdout=subprocess.PIPE, **kwargs)
        children.append(child)
        threading.Thread(target=lambda: (child.stdout.readline(), ready.release()),
                         daemon=True).start()
        return child

    def stop_when_both_run() -> None:
        ready.acquire()
        ready.acquire()
        stop.set()

    threading.Thread(target=stop_when_both_run, daemon=True).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(supervisor_module.subprocess, "Popen", popen)
        supervise(command, processes=2, stop=stop)
    assert [c.returncode for c in children] == [0, 0]
