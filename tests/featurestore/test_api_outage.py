"""A real `featurestore serve` (2 workers) on a PostgreSQL of the test's own (registry and our
tables, as the services profile has them): a huge body refused unread while other clients'
lookups go on, and the database stopped for 20 s under load."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

import httpx
import pytest

from tests.featurestore.conftest import FRESH_CARD
from tests.servers import PostgresServer, free_port, wait_for

pytestmark = [pytest.mark.heavy, pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
OUTAGE_SECONDS = 20
MAX_BODY = 1 << 20
LOOKUP = {"features": ["card_profile:credit_limit"], "entities": {"card_id": [FRESH_CARD]}}


class Server:
    def __init__(self, served, database: PostgresServer, logs: Path) -> None:
        from featurestore.apikeys import create_key
        from featurestore.db import engine
        from featurestore.feast_config import apply

        self.database = database
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")},
            "FEATURESTORE_CONFIG": str(logs / "absent.yaml"),
            "FEATURESTORE_PROFILE": "services",
            "FEATURESTORE_DATA_DIR": str(served.data_dir),
            "FEATURESTORE_REDIS_URL": served.redis_url,
            "FEATURESTORE_REGISTRY_URL": database.url,
            "FEATURESTORE_DATABASE_URL": database.url,
            "FEATURESTORE_SERVE_MAX_BODY_BYTES": str(MAX_BODY),
            "FEATURESTORE_SERVE_KEY_REFRESH_SECONDS": "1",
            "FEATURESTORE_SERVE_REGISTRY_REFRESH_SECONDS": "1",
        }
        self.settings = served.model_copy(update={"registry_url": database.url,
                                                  "database_url": database.url})
        apply(self.settings)
        database_engine = engine(self.settings)
        self.tokens = {
            scope: create_key(database_engine, scope, [scope])[0]
            for scope in ("features:read", "monitors:read", "datasets:export", "admin")
        }
        self.log = open(logs / "serve.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "featurestore"), "serve", "--port",
             str(self.port), "--workers", "2"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 120, "featurestore serve")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"featurestore serve exited: {self.process.returncode}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def headers(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    database = PostgresServer()
    try:
        running = Server(served, database, tmp_path_factory.mktemp("serve"))
        try:
            yield running
        finally:
            running.stop()
    finally:
        database.remove()


class Load:
    """Clients looking up features without pause, each answer's status and Retry-After kept."""

    def __init__(self, server: Server, clients: int = 4) -> None:
        self._server = server
        self._stop = threading.Event()
        self.answers: list[tuple[int, str | None]] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self._server.url, timeout=30,
                          headers=self._server.headers("features:read")) as client:
            while not self._stop.is_set():
                response = client.post("/v1/online-features", json=LOOKUP)
                self.answers.append((response.status_code, response.headers.get("retry-after")))

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.answers) >= 8, 60, "the load's first answers")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _status(sock: socket.socket) -> int:
    sock.settimeout(20)
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    return int(head.split(b" ", 2)[1])


def _partial_upload(server: Server, path: str, token: str | None, *, chunked: bool) -> int:
    """The status answered to a request that declares 100 MB (or streams chunks without an
    end) of which only a part is ever sent: an answer proves the body was not read whole."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {100 << 20}"
    head = (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"{auth}{framing}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        if chunked:  # the limit in chunks, then one byte over it; never the last chunk
            sock.sendall(head)
            piece = b"[" * 65536
            for _ in range(MAX_BODY // len(piece)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"1\r\n[\r\n")  # one write: the server reads all it answers to
        else:
            # One write, less than the server reads at once: it has all of it when it answers
            # and closes, so nothing is left unread (which would reset the connection).
            sock.sendall(head + b"{" * 16384)
        return _status(sock)


def test_huge_bodies_are_refused_unread_while_other_lookups_succeed(server) -> None:
    admin = server.tokens["admin"]
    with Load(server) as load:
        for path in ("/v1/score", "/v1/datasets", "/v1/silences", "/v1/online-features"):
            assert _partial_upload(server, path, None, chunked=False) == 401, path
            assert _partial_upload(server, path, admin, chunked=False) == 413, path
            assert _partial_upload(server, path, admin, chunked=True) == 413, path
        # Malformed JSON without a key is refused for the key, not parsed.
        anonymous = httpx.post(f"{server.url}/v1/online-features", content=b"{not json")
        assert anonymous.status_code == 401
    statuses = Counter(status for status, _ in load.answers)
    assert statuses == {200: len(load.answers)}, statuses


def test_sql_database_down_for_20s_under_load(server) -> None:
    from featurestore.apikeys import create_key
    from featurestore.db import engine

    unknown = {"Authorization": f"Bearer fsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # Every key in use once before the outage (each worker holds the key table anyway).
        assert client.get("/v1/alerts", headers=server.headers("monitors:read")).status_code == 200
        with Load(server) as load:
            server.database.stop()
            stopped = time.monotonic()
            try:
                down: dict[str, list[httpx.Response]] = {"unknown": [], "alerts": [],
                                                         "dataset": [], "readyz": []}
                while time.monotonic() - stopped < OUTAGE_SECONDS:
                    down["unknown"].append(client.post("/v1/online-features", json=LOOKUP,
                                                       headers=unknown))
                    down["alerts"].append(client.get(
                        "/v1/alerts", headers=server.headers("monitors:read")))
                    down["dataset"].append(client.get(
                        "/v1/datasets/ds-000000000000", headers=server.headers("datasets:export")))
                    down["readyz"].append(client.get("/readyz"))
                    time.sleep(0.5)
                metrics = client.get("/metrics", headers=server.headers("admin"))
            finally:
                server.database.start()
        # Keys verified before the outage kept working: Redis was up all along.
        statuses = Counter(status for status, _ in load.answers)
        assert statuses == {200: len(load.answers)}, statuses
        for what, responses in down.items():
            for response in responses:
                # The open readiness body names no host, port or database.
                assert str(server.database.port) not in response.text, what
                assert "127.0.0.1" not in response.text and "postgres" not in response.text
                if what == "readyz":
                    # Still ready: it serves its last registry snapshot and the keys it holds.
                    assert response.status_code == 200, response.text
                    assert response.json()["checks"]["registry"].startswith("stale: "), what
                    continue
                assert response.status_code == 503, (what, response.text)
                assert response.headers["retry-after"] == "1", what
        assert {r.json()["error"]["code"] for r in down["alerts"]} == {"database_unavailable"}
        assert {r.json()["error"]["code"] for r in down["unknown"]} == {"key_store_unavailable"}
        assert metrics.status_code == 200
        stale = re.search(r"^featurestore_api_stale_key_checks_total (\S+)$", metrics.text, re.MULTILINE)
        assert stale is not None and float(stale.group(1)) > 0

        # Back: a key created now is accepted once each worker has read the table again (until
        # then 503 + Retry-After), and the database routes answer again.
        fresh, _ = create_key(engine(server.settings), "after", ["features:read"])

        def accepted() -> bool:
            response = client.post("/v1/online-features", json=LOOKUP,
                                   headers={"Authorization": f"Bearer {fresh}"})
            assert response.status_code == 200 or (
                response.status_code == 503 and response.headers["retry-after"] == "1"
            ), response.text
            return response.status_code == 200

        wait_for(lambda: all(accepted() for _ in range(4)), 60, "the new key accepted")
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, "readiness")
        assert client.get("/v1/alerts", headers=server.headers("monitors:read")).status_code == 200


def test_a_worker_started_while_the_database_is_down_waits_for_it(server, tmp_path) -> None:
    """uvicorn stops every worker when a restarted one fails its start-up: a worker replaced
    during a database outage (a missed health check, say) must wait for the database, not fail
    (seen: the whole server gone, connections refused, after one worker was replaced)."""
    log = tmp_path / "late-serve.log"
    port = free_port()
    server.database.stop()
    try:
        with log.open("wb") as output:
            late = subprocess.Popen(
                [str(Path(sys.executable).parent / "featurestore"), "serve", "--port", str(port),
                 "--workers", "1"],
                env=server.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for(lambda: late.poll() is not None
                     or b"waiting for the SQL database" in log.read_bytes(),
                     120, "the new worker to wait for the database")
            assert late.poll() is None, log.read_text()
        finally:
            server.database.start()

        def ready() -> bool:
            assert late.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "the worker to start once the database is back")
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/online-features", json=LOOKUP,
                            headers=server.headers("features:read"), timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        late.send_signal(signal.SIGTERM)
        try:
            late.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(late.pid, signal.SIGKILL)
            late.wait(timeout=10)
