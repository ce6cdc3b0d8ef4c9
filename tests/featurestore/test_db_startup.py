"""Every process starts at once on a fresh database and all come up: our schema is created by
one of them under the schema lock, Feast's registry under a lock of its own.

Readiness is observed, never waited for by the clock: a line a process prints once its start-up
is done, a command's exit, and for each API worker the listening socket in its event loop's epoll
set (a uvicorn worker adds it only after its application started). Waits are bounded and generous,
a safety net for a loaded machine.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from featurestore import migrations
from tests.conftest import REDIS_URL
from tests.featurestore.freshdb import fresh_database
from tests.servers import free_port, wait_for

pytestmark = [pytest.mark.heavy]

BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
FEATURESTORE = str(Path(sys.executable).with_name("featurestore"))
START_TIMEOUT = 240.0

# What every process does at start, in a process that stays up across tries: each line on stdin
# names a fresh database; the process opens our schema and the Feast registry on it, as the API,
# the workers and the CLI do at start, then says so.
STARTER = """
import json, sys
from featurestore.db import engine
from featurestore.feast_config import feature_store
from featurestore.settings import Settings
print("loaded", flush=True)
for line in sys.stdin:
    settings = Settings(**json.loads(line))
    engine(settings)
    feature_store(settings).list_feature_views()
    print("ready", flush=True)
"""


class Lines:
    """The lines of one of a process's outputs (stdout by default), read by a thread so a test
    can wait for one with a bound."""

    def __init__(self, process: subprocess.Popen, stream=None) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream or process.stdout,),
                                       daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.seen.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, wanted: str, timeout: float = START_TIMEOUT) -> None:
        """Wait for a line that contains `wanted`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"exited {self.process.wait()} before {wanted!r}: "
                                     f"{''.join(self.seen)[-3000:]}")
            if wanted in line:
                return

    def text(self) -> str:
        """Everything the process wrote there, once it has exited."""
        self.reader.join(timeout=START_TIMEOUT)
        return "".join(self.seen)


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEATURESTORE_")}
    env["FEATURESTORE_CONFIG"] = str(tmp_path / "absent-featurestore.yaml")
    env.update({f"FEATURESTORE_{key.upper()}": value for key, value in settings.items()})
    return env


def _assert_schema_and_registry(url: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            state = migrations.read_state(connection)
        assert state.current == state.head
        assert {"feast_metadata", "projects"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def scratch(tmp_path):
    """Where SQLite databases go: tmpfs when there is one (the test is about concurrency, and
    each try's dozens of DDL commits wait for the disk otherwise)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(dir=shm, prefix="featurestore-test-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


STARTERS = 6


@pytest.fixture(scope="module")
def starters(tmp_path_factory):
    """STARTERS processes that have imported everything (once for both backends), each waiting
    for the database of the next try on its stdin."""
    env = _env(tmp_path_factory.mktemp("starters"))
    processes = [
        subprocess.Popen([sys.executable, "-c", STARTER], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(STARTERS)
    ]
    outputs = [Lines(process) for process in processes]
    try:
        for output in outputs:
            output.expect("loaded")
        yield outputs
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_processes_starting_together_on_fresh_databases_all_come_up(
    backend, starters, scratch
) -> None:
    for attempt in range(10):
        with fresh_database(backend, scratch) as url:
            line = json.dumps({"database_url": url, "registry_url": url,
                               "data_dir": str(scratch / f"data{attempt}")}) + "\n"
            # Written back to back: every process starts on the empty database together.
            for output in starters:
                output.process.stdin.write(line)
                output.process.stdin.flush()
            for output in starters:
                output.expect("ready")
            _assert_schema_and_registry(url)


def _listening_socket(port: int) -> str | None:
    """The `socket:[inode]` of the socket listening on `port`, from /proc/net/tcp."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return f"socket:[{fields[9]}]"
    return None


def _watches(pid: int, target: str) -> bool:
    """Whether one of the process's epoll sets watches `target` (a uvicorn worker's event loop
    adds the listening socket once its application has started)."""
    try:
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            for row in info.read_text().splitlines():
                if row.startswith("tfd:"):
                    watched = row.split()[1]
                    if os.readlink(f"/proc/{pid}/fd/{watched}") == target:
                        return True
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return False


def _serving_workers(server: subprocess.Popen, port: int) -> int:
    listening = _listening_socket(port)
    if listening is None:
        return 0
    children = psutil.Process(server.pid).children()
    return sum(_watches(child.pid, listening) for child in children)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def applied_registry(tmp_path_factory):
    """A PostgreSQL database with feature_repo/ applied: the registry the stream worker and the
    monitor worker read their definitions from."""
    directory = tmp_path_factory.mktemp("registry")
    with fresh_database("postgres", directory) as url:
        done = subprocess.run(
            [FEATURESTORE, "apply"], check=False, capture_output=True, text=True, timeout=600,
            env=_env(directory, profile="services", registry_url=url, database_url=url,
                     redis_url=REDIS_URL, data_dir=str(directory / "data")),
        )
        assert done.returncode == 0, done.stderr
        yield url


@pytest.mark.postgres
@pytest.mark.kafka
@pytest.mark.redis
def test_the_whole_set_of_processes_starts_together_on_a_fresh_database(
    applied_registry, kafka_bootstrap, tmp_path
) -> None:
    port = free_port()
    with fresh_database("postgres", tmp_path) as url:
        common = {"profile": "services", "database_url": url, "redis_url": REDIS_URL,
                  "data_dir": str(tmp_path / "data"), "kafka_bootstrap_servers": kafka_bootstrap,
                  "stream_group": f"startup-{uuid.uuid4().hex[:8]}"}
        # The API's registry is the fresh database too (as in docker-compose): its four workers
        # race on Feast's first use as well as on our schema.
        commands = {
            "api": ([FEATURESTORE, "serve", "--workers", "4", "--port", str(port)],
                    common | {"registry_url": url}),
            "stream worker": ([FEATURESTORE, "stream", "run"],
                              common | {"registry_url": applied_registry}),
            "monitor worker": ([FEATURESTORE, "monitors", "run", "--once"],
                               common | {"registry_url": applied_registry}),
            "cli": ([FEATURESTORE, "keys", "create", "--name", "startup", "--scope", "admin"],
                    common | {"registry_url": applied_registry}),
        }
        started = {
            name: subprocess.Popen(command, env=_env(tmp_path, **settings), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, (command, settings) in commands.items()
        }
        server = started.pop("api")
        try:
            # The stream worker logs the topics it created (its group's repartition topic is
            # new) once it has opened the registry and reached Kafka; then it is stopped.
            stream = started.pop("stream worker")
            stream_log = Lines(stream, stream.stderr)
            stream_log.expect("created topics")
            stream.terminate()
            assert stream.wait(timeout=START_TIMEOUT) == 0, stream_log.text()
            assert "stopped: applied 0 events" in stream_log.text()
            outputs = {name: process.communicate(timeout=START_TIMEOUT)
                       for name, process in started.items()}
            codes = {name: process.returncode for name, process in started.items()}
            # The CLI job ends with 0; the monitor worker ends its one pass with 1, its monitor
            # having no baseline yet: it came up and checked.
            assert codes == {"monitor worker": 1, "cli": 0}, outputs
            assert outputs["cli"][0].startswith("fsk_")
            assert "0 windows checked" in outputs["monitor worker"][1]
            assert "no baseline" in outputs["monitor worker"][1]
            wait_for(lambda: server.poll() is not None or _ready(port), START_TIMEOUT, "/readyz")
            wait_for(lambda: server.poll() is not None or _serving_workers(server, port) == 4,
                     START_TIMEOUT, "4 API workers serving")
            assert server.poll() is None, server.communicate()[1]
            _assert_schema_and_registry(url)
        finally:
            server.terminate()
            server.communicate(timeout=60)
