"""bench/serving.py's `start_server` leaves nothing running when a server fails to start: a
server that never answers within the timeout is stopped, its whole process group with it (a
gunicorn or uvicorn master and its workers)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.servers import wait_for

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _alive(group: int) -> list[int]:
    """The processes of `group` that are not zombies."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            alive.append(int(entry.name))
    return alive


def _gone(group: int) -> None:
    """Every process of `group` ends (signalled already; dying takes a moment under load)."""
    wait_for(lambda: _alive(group) == [], 30, f"process group {group} to end")


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import `common` as a sibling
    import serving

    return serving


@pytest.fixture
def started(serving, monkeypatch) -> list:
    """Each server process `start_server` starts (its pid is its group's: a session of its
    own), recorded as it is made, so no test waits on the server to say who it is."""
    made = []
    popen = serving.subprocess.Popen

    def recorded(*args, **kwargs):
        made.append(popen(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(serving.subprocess, "Popen", recorded)
    return made


def test_a_server_that_never_answers_is_stopped_with_its_whole_group(serving, started) -> None:
    # A "master" that forks a "worker" and never listens.
    command = ["sh", "-c", "sleep 600 & sleep 600; wait"]
    with pytest.raises(SystemExit, match="did not answer .* within 1 s"):
        serving.start_server(command, "http://127.0.0.1:9/docs", timeout=1)
    [server] = started
    _gone(server.pid)


def test_a_server_that_exits_leaves_no_worker_behind(serving, started) -> None:
    # It exits only once its "worker" runs.
    command = [sys.executable, "-c", (
        "import subprocess, sys; subprocess.Popen(['sleep', '600']); sys.exit(3)")]
    with pytest.raises(SystemExit, match="exited with 3"):
        serving.start_server(command, "http://127.0.0.1:9/docs")
    [server] = started
    _gone(server.pid)
    assert os.getpgid(0) != server.pid  # it had a group of its own
