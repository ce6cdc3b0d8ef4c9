"""Real server processes a test starts and stops itself (a Redis to take down, say)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
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


class PostgresServer:
    """A PostgreSQL of the test's own (initdb into a temporary directory, trust auth, one free
    port), to stop and start again; never the shared one. As root, its commands run as the
    `postgres` user (initdb refuses root)."""

    def __init__(self) -> None:
        import glob
        import os
        import shutil
        import tempfile

        self._bin = max(glob.glob("/usr/lib/postgresql/*/bin"))
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="featurestore-pg-")
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self.data = f"{self.directory}/data"
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as_owner, f"{self._bin}/{program}", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", f"{self.directory}/log",
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Immediate shutdown: open connections drop, new ones are refused."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "60", "stop")

    def remove(self) -> None:
        import shutil

        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)


def featurestore_server(
    settings, tmp_path, ready_within: float = 90, **overrides: str
) -> tuple[subprocess.Popen, str]:
    """`featurestore serve` (two worker processes) on `settings`' data and a free port, once it
    is ready (else it is stopped and the test fails); `overrides` are more settings
    (`api_auth="off"`). Its stderr goes to a file, which never fills up and block the server as
    a pipe nobody reads would."""
    port = free_port()
    env = {
        **os.environ,
        "FEATURESTORE_PROFILE": settings.profile,
        "FEATURESTORE_DATA_DIR": str(settings.data_dir),
        "FEATURESTORE_REGISTRY_URL": settings.registry_url,
        "FEATURESTORE_DATABASE_URL": settings.database_url,
        "FEATURESTORE_REDIS_URL": settings.redis_url,
        "FEATURESTORE_CONFIG": str(tmp_path / "absent.yaml"),
        **{f"FEATURESTORE_{k.upper()}": v for k, v in overrides.items()},
    }
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "featurestore"), "serve", "--port", str(port),
             "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, ready_within, "featurestore serve")
    except BaseException:
        server.terminate()
        server.wait(timeout=30)
        raise
    return server, url
