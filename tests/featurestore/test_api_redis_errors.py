"""Redis answering errors instead of data (a password set at runtime: NOAUTH; a replica cut off
from its master: MASTERDOWN) is an outage: 503 + Retry-After, /readyz too, then recovery on
fresh connections. A redis-server of the test's own."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from tests.servers import free_port, redis_server

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
LOOKUP = {"features": ["card_profile:credit_limit"], "entities": {"card_id": [1]}}


def _outage(client: TestClient, port: int, reply: str) -> None:
    for _ in range(4):  # past any pooled connection: fresh ones meet the error reply too
        response = client.post("/v1/online-features", json=LOOKUP)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "online_store_unavailable"
    assert reply in response.json()["error"]["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert reply in ready.json()["checks"]["online_store"]
    assert str(port) not in ready.text


@pytest.fixture
def own_redis(served, tmp_path):
    from featurestore.api.app import create_app

    port = free_port()
    server = redis_server(port, tmp_path)
    own = served.model_copy(update={
        "api_auth": "off", "redis_url": f"redis://127.0.0.1:{port}/0",
        "serve_redis_timeout_seconds": 2.0,
    })
    try:
        with TestClient(create_app(own), raise_server_exceptions=False) as client:
            assert client.post("/v1/online-features", json=LOOKUP).status_code == 200
            yield client, port
    finally:
        server.kill()
        server.wait(timeout=10)


def test_noauth_after_a_password_change_is_503_then_recovers(own_redis) -> None:
    client, port = own_redis
    admin = redis.Redis(port=port)
    admin.config_set("requirepass", "changed")
    admin.client_kill_filter(_type="normal", skipme=True)  # connections log in again
    _outage(client, port, "NOAUTH")
    redis.Redis(port=port, password="changed").config_set("requirepass", "")
    assert client.post("/v1/online-features", json=LOOKUP).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_replica_without_its_master_is_503_then_recovers(own_redis) -> None:
    client, port = own_redis
    admin = redis.Redis(port=port)
    admin.config_set("replica-serve-stale-data", "no")
    admin.replicaof("127.0.0.1", free_port())  # a master that is not there
    _outage(client, port, "MASTERDOWN")
    admin.replicaof("no", "one")
    assert client.post("/v1/online-features", json=LOOKUP).status_code == 200
    assert client.get("/readyz").status_code == 200
