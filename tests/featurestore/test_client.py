"""The Python client against a real `featurestore serve` (two worker processes)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest

from tests.featurestore.conftest import FRESH_CARD
from tests.servers import featurestore_server, free_port, redis_server

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
PROFILE = ["card_profile:credit_limit", "card_profile:home_country"]


@pytest.fixture(scope="module")
def api(served, tmp_path_factory):
    from featurestore.apikeys import create_key
    from featurestore.db import engine

    token, _ = create_key(
        engine(served), "client-test", ["features:read", "monitors:read", "datasets:export"]
    )
    server, url = featurestore_server(served, tmp_path_factory.mktemp("serve"))
    yield url, token
    server.terminate()
    server.wait(timeout=30)


def test_sync_client_dicts_frames_and_errors(api) -> None:
    from featurestore.client import ApiError, FeatureClient

    url, token = api
    with FeatureClient(url, token) as client:
        rows = client.online_features({"card_id": [FRESH_CARD, 5]}, features=PROFILE)
        assert rows.to_dict()["credit_limit"][0] == 5000.0
        assert rows.statuses()["home_country"][0] == "PRESENT"
        frame = rows.to_df()
        assert list(frame.columns) == ["card_id", "credit_limit", "home_country"]
        assert frame["home_country"][0] == "DE"
        with pytest.raises(ApiError) as error:
            client.online_features({"card_id": [1]}, feature_service="nope")
        assert error.value.status == 404 and "nope" in error.value.message
        assert client.ready()
    with FeatureClient(url, "fsk_bad_key") as client, pytest.raises(ApiError) as error:
        client.online_features({"card_id": [1]}, features=PROFILE)
    assert error.value.status == 401
    assert "fsk_bad_key" not in repr(client)


def test_dataset_job_through_the_client(api, tmp_path) -> None:
    from featurestore.client import FeatureClient

    url, token = api
    entities = {"card_id": [FRESH_CARD, 5], "event_timestamp": [
        "2026-11-01T00:00:00Z", "2026-03-02T12:00:00+00:00"], "label": [True, False]}
    with FeatureClient(url, token) as client:
        job = client.create_dataset(entities, features=PROFILE)
        assert job["status"] in ("running", "succeeded")
        path = client.download_dataset(job["id"], tmp_path / "rows.parquet")
    rows = pq.read_table(path).to_pydict()
    assert rows["label"] == [True, False]
    # The fresh card's profile was written online only: the offline store has no row for it.
    assert rows["credit_limit"][0] is None


def test_async_client_concurrent_lookups_across_workers(api) -> None:
    from featurestore.client import AsyncFeatureClient

    url, token = api

    async def lookups() -> list:
        async with AsyncFeatureClient(url, token) as client:
            return await asyncio.gather(*(
                client.online_features({"card_id": [FRESH_CARD]}, features=PROFILE)
                for _ in range(200)
            ))

    answers = asyncio.run(lookups())
    assert {a.to_dict()["credit_limit"][0] for a in answers} == {5000.0}
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    # Both worker processes' counts are summed: at least the 200 lookups above.
    line = next(
        s for s in metrics.splitlines()
        if s.startswith('featurestore_api_requests_total{code="200",route="/v1/online-features"}')
    )
    assert float(line.split()[-1]) >= 200


@pytest.mark.heavy
def test_client_retries_a_503_until_redis_returns(served, tmp_path) -> None:
    from featurestore.client import ApiError, FeatureClient

    port = free_port()
    redis = redis_server(port, tmp_path)
    server, url = featurestore_server(
        served, tmp_path, redis_url=f"redis://127.0.0.1:{port}/0", api_auth="off",
        serve_redis_timeout_seconds="0.5",
    )
    try:
        redis.kill()
        redis.wait(timeout=10)
        with FeatureClient(url, retries=0) as client, pytest.raises(ApiError) as error:
            client.online_features({"card_id": [1]}, features=PROFILE)
        assert error.value.status == 503
        restarted: list[subprocess.Popen] = []
        restart = threading.Timer(1.5, lambda: restarted.append(redis_server(port, tmp_path)))
        restart.start()
        started = time.monotonic()
        with FeatureClient(url, retries=10, backoff_seconds=0.1) as client:
            rows = client.online_features({"card_id": [1]}, features=PROFILE)
        assert rows.statuses()["credit_limit"] == ["NOT_FOUND"]  # an empty Redis
        assert time.monotonic() - started >= 1.5
        restart.join()
        redis = restarted[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
        redis.kill()
        redis.wait(timeout=10)
