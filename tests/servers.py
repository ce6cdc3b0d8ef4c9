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


def _cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (so P <= 55535)."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            port -= 20_000
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisCluster:
    """A Redis Cluster of the test session's own: `masters` redis-servers on free ports, no
    replicas, no persistence (a node restarted comes back empty, as after a crash without AOF)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [_cluster_port() for _ in range(masters)]
        self.servers: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self.start(port)
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, port: int) -> None:
        self.servers[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
             "--cluster-node-timeout", "3000", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: pings(redis.Redis(port=port)), 10, f"redis-server on {port}")

    def kill(self, port: int) -> None:
        server = self.servers.pop(port)
        server.kill()
        server.wait(timeout=10)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port)

    def _ok(self) -> bool:
        for port in self.ports:
            try:
                info = self.node(port).execute_command("CLUSTER", "INFO")
            except redis.ConnectionError:
                return False
            if b"cluster_state:ok" not in info:
                return False
        return True

    def wait_ok(self) -> None:
        """Until every node says the cluster serves all its slots."""
        wait_for(self._ok, 30, "cluster_state:ok on every node")

    def owner(self, slot: int) -> int:
        """The port of the master that serves `slot`."""
        for first, last, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, port: int) -> str:
        return self.node(port).execute_command("CLUSTER", "MYID").decode()

    def flush(self) -> None:
        for port in self.ports:
            self.node(port).flushall()

    def stop(self) -> None:
        for port in list(self.servers):
            self.kill(port)
