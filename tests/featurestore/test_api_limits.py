"""Limits that keep one request from hurting others: the key before the body, the body size,
what a 422 says back, the number of features of a lookup, dataset jobs at once."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.featurestore.conftest import FRESH_CARD
from tests.servers import wait_for

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
SERVICE = "fraud_detection_v1"
BODY_ROUTES = ("/v1/online-features", "/v1/score", "/v1/datasets", "/v1/silences")


@contextlib.contextmanager
def _keyed_client(served, **update):
    """A client of the app with API keys on (and `update` to the settings), with an admin token."""
    from featurestore.api.app import create_app
    from featurestore.apikeys import create_key
    from featurestore.db import engine

    token, _ = create_key(engine(served), "limits", ["admin"])
    with TestClient(create_app(served.model_copy(update=update)),
                    raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture
def keyed(served):
    """A keyed client of an app with a 4 KiB body limit."""
    with _keyed_client(served, serve_max_body_bytes=4096) as client:
        yield client


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_the_key_is_checked_before_the_body_is_parsed(keyed, path) -> None:
    anonymous = keyed.post(path, content=b"{not json", headers={
        "Authorization": "", "content-type": "application/json"})
    assert anonymous.status_code == 401, anonymous.text
    wrong = keyed.post(path, content=b"{not json", headers={
        "Authorization": "Bearer fsk_nope", "content-type": "application/json"})
    assert wrong.status_code == 401, wrong.text
    assert keyed.post(path, content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_over_the_limit_is_413(keyed, path) -> None:
    declared = keyed.post(path, content=b"{" * 4097, headers={"content-type": "application/json"})
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "body_too_large"
    assert "serve_max_body_bytes" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        yield from (b"[" * 1024 for _ in range(5))

    streamed = keyed.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text


def test_a_body_at_the_limit_is_served(keyed) -> None:
    body = b'{"features": ["card_profile:credit_limit"], "entities": {"card_id": [%d]}}' % (
        FRESH_CARD)
    padded = body + b" " * (4096 - len(body))
    response = keyed.post("/v1/online-features", content=padded,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_a_422_names_the_problem_without_echoing_the_input(keyed) -> None:
    secret_ish = "s3cr3t-" + "x" * 500
    response = keyed.post("/v1/online-features", json={
        "feature_service": SERVICE, "entities": {secret_ish: 1, "card_id": 2, "merchant_id": 3},
        "full_feature_names": "maybe"})
    assert response.status_code == 422, response.text
    assert secret_ish not in response.text
    assert "maybe" not in response.text
    error = response.json()["error"]
    assert "full_feature_names" in error["message"] and "entities.card_id" in error["message"]
    assert all(set(d) == {"loc", "msg", "type"} for d in error["details"])


def test_too_many_features_is_413_naming_the_limit(served) -> None:
    refs = ["card_profile:credit_limit"] * 20_000
    entities = {"card_id": [1], "event_timestamp": ["2026-03-02T00:00:00Z"]}
    with _keyed_client(served) as client:
        for path in ("/v1/online-features", "/v1/datasets"):
            response = client.post(path, json={"features": refs, "entities": entities})
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "too_many_features"
            assert "serve_max_features" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def catalog(served):
    from featurestore.feast_config import feature_store
    from featurestore.online.catalog import Catalog

    return Catalog(feature_store(served))


REFS = ["card_profile:credit_limit", "card_profile:card_age_days",
        "card_transaction_features:card_txn_count_1h", "merchant_transaction_features:merchant_txn_count_24h"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(REFS), min_size=1, max_size=12))
def test_duplicate_features_are_named_as_a_naive_count_says(catalog, refs) -> None:
    from featurestore.errors import UnknownNameError

    duplicates = sorted({r for r in refs if refs.count(r) > 1})
    if duplicates:
        with pytest.raises(UnknownNameError) as raised:
            catalog.plan_for_features(refs)
        assert str(raised.value) == f"features requested more than once: {duplicates}"
    else:
        assert catalog.plan_for_features(refs).feature_refs == refs


def test_dataset_jobs_over_the_limit_are_429_and_jobs_run_in_a_child_process(served) -> None:
    from featurestore.api.app import create_app
    from featurestore.api.datasets import JOBS
    from featurestore.db import engine

    own = served.model_copy(update={"api_auth": "off", "serve_max_dataset_jobs": 1})
    body = {"feature_service": SERVICE, "entities": {
        "card_id": [FRESH_CARD], "merchant_id": [1], "amount": [5.0],
        "event_timestamp": ["2026-03-02T12:00:00Z"]}}
    database = engine(own)
    busy = f"ds-busy{os.getpid()}"
    with TestClient(create_app(own)) as client:
        with database.begin() as connection:  # a job running elsewhere fills the only place
            connection.execute(JOBS.insert().values(
                id=busy, status="running", worker=f"{socket.gethostname()}:{os.getpid()}",
                created_at=sa.func.now()))
        try:
            refused = client.post("/v1/datasets", json=body)
        finally:
            with database.begin() as connection:
                connection.execute(JOBS.delete().where(JOBS.c.id == busy))
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "serve_max_dataset_jobs" in refused.json()["error"]["message"]
        with database.connect() as connection:  # the refused job left nothing behind
            assert connection.execute(sa.select(sa.func.count()).select_from(JOBS).where(
                JOBS.c.status == "running")).scalar_one() == 0

        created = client.post("/v1/datasets", json=body)
        assert created.status_code == 202, created.text
        job = created.json()
        deadline = time.monotonic() + 120
        while job["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            job = client.get(f"/v1/datasets/{job['id']}").json()
        assert job["status"] == "succeeded", job
        with database.connect() as connection:
            worker = connection.execute(
                sa.select(JOBS.c.worker).where(JOBS.c.id == job["id"])).scalar_one()
        pid = int(worker.rpartition(":")[2])
        assert pid != os.getpid()  # ran in a child process, which ends: its memory with it
        wait_for(lambda: not _alive(pid), 60, "the job's process to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
