"""bench/serving.py's `start_server` leaves nothing running when a server fails to start: a
server that never answers within the timeout is stopped, its whole process group with it (a
gunicorn or uvicorn master and its workers)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import `common` as a sibling
    import serving

    return serving


def test_a_server_that_never_answers_is_stopped_with_its_whole_group(serving, tmp_path) -> None:
    pidfile = tmp_path / "pid"
    # A "master" that forks a "worker" and never listens.
    command = ["sh", "-c", f"echo $$ > {pidfile}; sleep 600 & sleep 600; wait"]
    with pytest.raises(SystemExit, match="did not answer .* within 1 s"):
        serving.start_server(command, "http://127.0.0.1:9/docs", timeout=1)
    group = int(pidfile.read_text())
    assert _alive(group) == []


def test_a_server_that_exits_leaves_no_worker_behind(serving, tmp_path) -> None:
    pidfile = tmp_path / "pid"
    command = [sys.executable, "-c", (
        "import os, subprocess, sys, time; "
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
        "subprocess.Popen(['sleep', '600']); time.sleep(0.5); sys.exit(3)")]
    with pytest.raises(SystemExit, match="exited with 3"):
        serving.start_server(command, "http://127.0.0.1:9/docs")
    assert _alive(int(pidfile.read_text())) == []
    assert os.getpgid(0) != int(pidfile.read_text())  # it had a group of its own
