"""`featurestore stream run --processes N` against the real broker and Redis: N worker processes
of one group share the partitions and end where one worker ends; a failing process is restarted
with backoff, then named in the error the supervisor exits with."""

from __future__ import annotations

import re
from datetime import date

import pytest

from fraud_example.generator import GeneratorConfig
from tests.conftest import REDIS_URL
from tests.streaming.harness import (
    StreamRun,
    assert_same_results,
    generated_messages,
    uninterrupted_run,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


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


def test_a_failing_process_is_restarted_with_backoff_then_named(
    tmp_path, kafka_bootstrap
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    # A registry with no feature views: every worker process exits with an error at start.
    run.env["FEATURESTORE_REGISTRY_URL"] = f"sqlite:///{tmp_path}/empty-registry.db"
    supervisor = run.spawn(processes=2)
    # Four starts of each process (Feast's import is most of one): minutes on a loaded machine.
    output = supervisor.communicate(timeout=900)[0].decode()
    assert supervisor.returncode == 2, output
    assert "restarting it in 1 s" in output and "restarting it in 2 s" in output
    flat = " ".join(output.split())
    assert re.search(r"worker process [01] \(pid \d+\) exited with code 2, 4 times in a row", flat)
