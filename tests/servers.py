"""Real server processes a test starts and stops itself (a Redis to take down, say)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import redis


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def redis_server(port: int, directory) -> subprocess.Popen:
    """A redis-server of the test's own (append-only file in `directory`), once it answers."""
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: pings(redis.Redis(port=port)), 10, "redis-server")
    return server
