"""`featurestore stream run --processes N`: N worker processes of one consumer group on one machine.

One Python process applies one core at the most (the interpreter lock); a machine with more
cores runs more workers. The supervisor starts N children (`featurestore stream run`, each a
member of the group), forwards a stop (SIGTERM, SIGINT) to each so it drains (checkpoints and
leaves the group), and returns once every child exited.

What the children share and what not: the data directory is shared on purpose (the offline
store, and the partition logs, one directory per partition, written only by the child the group
assigned it to, so a partition moving between children finds its log); each child has its own
consumer, producer, checkpoint writer and metrics registry, and with a metrics port its own
port (the port + the child's index).

A child that exits with an error is restarted after a backoff (1 s, doubling to 30 s; a run of
a minute resets it), each time logged; after `MAX_RESTARTS` failures in a row the supervisor
stops the others and raises `ChildFailed` naming it. A child that exits cleanly (`--idle-seconds`)
is not restarted.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from featurestore.errors import FeatureStoreError

log = logging.getLogger("featurestore.stream")

MAX_RESTARTS = 3
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_SECONDS = 60.0  # a child that ran this long starts its backoff over
_TICK_SECONDS = 0.2
_DRAIN_SECONDS = 120.0  # a child that has not drained by then is killed


class ChildFailed(FeatureStoreError):
    """A worker process kept exiting with an error."""


@dataclass
class _Child:
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0  # in a row
    restart_at: float | None = None


def supervise(
    command: Callable[[int], list[str]], processes: int, stop: threading.Event
) -> None:
    """Run `command(index)` for index 0..processes-1 until each exits cleanly or `stop` is set."""
    children = [_Child(i) for i in range(processes)]
    for child in children:
        _start(child, command)
    try:
        while not stop.is_set() and any(c.process or c.restart_at for c in children):
            now = time.monotonic()
            for child in children:
                if child.process is not None and child.process.poll() is not None:
                    _exited(child, now)
                elif child.restart_at is not None and now >= child.restart_at:
                    _start(child, command)
            stop.wait(_TICK_SECONDS)
    except BaseException:
        _drain(children, check=False)  # the error that stopped the loop is the one to report
        raise
    _drain(children, check=True)


def _start(child: _Child, command: Callable[[int], list[str]]) -> None:
    child.process = subprocess.Popen(command(child.index))
    child.started, child.restart_at = time.monotonic(), None
    log.info("worker process %d started (pid %d)", child.index, child.process.pid)


def _exited(child: _Child, now: float) -> None:
    assert child.process is not None
    code, pid = child.process.returncode, child.process.pid
    child.process = None
    if code == 0:
        log.info("worker process %d (pid %d) finished", child.index, pid)
        return
    if now - child.started >= HEALTHY_SECONDS:
        child.failures = 0
    child.failures += 1
    if child.failures > MAX_RESTARTS:
        raise ChildFailed(
            f"worker process {child.index} (pid {pid}) exited with code {code}, "
            f"{child.failures} times in a row; the other worker processes were stopped"
        )
    delay = min(FIRST_BACKOFF_SECONDS * 2 ** (child.failures - 1), MAX_BACKOFF_SECONDS)
    log.warning("worker process %d (pid %d) exited with code %d; restarting it in %.0f s "
                "(failure %d of %d in a row)", child.index, pid, code, delay, child.failures,
                MAX_RESTARTS + 1)
    child.restart_at = now + delay


def _drain(children: list[_Child], check: bool) -> None:
    """Stop every running child (SIGTERM: it checkpoints and leaves) and wait for it; `check`:
    raise ChildFailed naming those that did not exit cleanly."""
    running = [c for c in children if c.process is not None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    failed = []
    for child in running:
        assert child.process is not None
        try:
            code = child.process.wait(timeout=_DRAIN_SECONDS)
        except subprocess.TimeoutExpired:
            child.process.kill()
            code = child.process.wait()
        # Killed by the SIGTERM itself: it came before the child's handler, while it started.
        if code not in (0, -signal.SIGTERM):
            failed.append(f"worker process {child.index} (pid {child.process.pid}) exited "
                          f"with code {code} while stopping")
    if check and failed:
        raise ChildFailed("; ".join(failed))
