"""docker-compose.redis-cluster.yml, run for real without Docker: its nodes' redis-server
commands and its init script on this machine (names resolved as Compose's network would), then
our cluster client reading and writing through the hostnames the nodes announce, and every
service of the base file that uses the online store switched to the cluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from featurestore.online.cluster import ClusterPool
from featurestore.online.resp import pack
from featurestore.settings import Settings, redis_nodes
from tests.servers import _cluster_port, pings, wait_for

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
CLUSTER = yaml.safe_load((ROOT / "docker-compose.redis-cluster.yml").read_text())["services"]
NODES = sorted(name for name in CLUSTER if name.startswith("redis-") and name[6:].isdigit())
pytestmark = pytest.mark.redis


def test_every_service_of_the_online_store_is_switched_to_the_cluster() -> None:
    users = {name for name, service in BASE.items() if "redis" in service.get("depends_on", {})}
    assert users == {"featurestore-init", "api", "stream-worker"}
    for name in users:
        environment = CLUSTER[name]["environment"]
        assert environment["FEATURESTORE_REDIS_TYPE"] == "redis_cluster"
        seeds = redis_nodes(environment["FEATURESTORE_REDIS_URL"])
        assert [host for host, _ in seeds] == NODES and {port for _, port in seeds} == {6379}
        assert CLUSTER[name]["depends_on"]["redis-cluster-init"] == {
            "condition": "service_completed_successfully"}
    Settings(redis_type="redis_cluster", redis_url=environment["FEATURESTORE_REDIS_URL"])
    init = CLUSTER["redis-cluster-init"]
    assert init["environment"]["REDIS_CLUSTER_NODES"].split() == [f"{n}:6379" for n in NODES]
    assert set(init["depends_on"]) == set(NODES)


def _node_command(name: str, port: int, directory: Path) -> list[str]:
    """The node's compose command with this machine's port, directory and name for it."""
    command = list(CLUSTER[name]["command"])
    for option, value in (("--port", str(port)), ("--dir", str(directory)),
                          ("--cluster-announce-hostname", "localhost")):
        command[command.index(option) + 1] = value
    return [*command, "--bind", "127.0.0.1"]


def _init(nodes: str) -> subprocess.CompletedProcess:
    shell, flags, script = CLUSTER["redis-cluster-init"]["entrypoint"]
    return subprocess.run(
        [shell, flags, script.replace("$$", "$")],  # Compose's escape for a literal $
        env={"PATH": os.environ["PATH"], "REDIS_CLUSTER_NODES": nodes},
        capture_output=True, text=True, timeout=120, check=False,  # its exit code is asserted
    )


@pytest.fixture
def compose_nodes(tmp_path):
    ports, servers = [], []
    try:
        for name in NODES:
            port = _cluster_port()
            directory = tmp_path / name
            directory.mkdir()
            servers.append(subprocess.Popen(_node_command(name, port, directory),
                                            stdout=subprocess.DEVNULL))
            wait_for(lambda p=port: pings(redis.Redis(port=p)), 10, f"{name} on {port}")
            ports.append(port)
        yield ports
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)


def test_the_init_script_forms_the_cluster_once_and_clients_follow_the_announced_names(
    compose_nodes,
) -> None:
    nodes = " ".join(f"127.0.0.1:{port}" for port in compose_nodes)
    formed = _init(nodes)
    assert formed.returncode == 0, formed.stdout + formed.stderr
    assert "the cluster serves every slot" in formed.stdout
    again = _init(nodes)  # `docker compose up` runs it each time
    assert again.returncode == 0, again.stdout + again.stderr
    assert "the cluster is formed already" in again.stdout

    slots = redis.Redis(port=compose_nodes[0]).execute_command("CLUSTER", "SLOTS")
    assert {bytes(entry[2][0]) for entry in slots} == {b"localhost"}  # names, not addresses
    assert sum(last - first + 1 for first, last, *_ in slots) == 16_384

    keys = [b"compose:%d" % i for i in range(200)]  # spread over every node's slots
    pool = ClusterPool([("localhost", compose_nodes[0])], tls=False, password=None, timeout=5)

    async def write_then_read() -> list[object]:
        try:
            await pool.execute([pack(b"SET", key, key[::-1]) for key in keys])
            return await pool.execute([pack(b"GET", key) for key in keys])
        finally:
            pool.close()

    assert asyncio.run(write_then_read()) == [key[::-1] for key in keys]
    owners = {redis.Redis(port=port).dbsize() for port in compose_nodes}
    assert 0 not in owners  # every node holds some of the keys
