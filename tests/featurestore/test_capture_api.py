"""The API's capture hook: what it serves for a feature service, and its scores, arrive in the
capture topic (real Redis, a real Kafka-protocol broker)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from tests.monitors.test_capture import capture_records

pytestmark = [pytest.mark.redis, pytest.mark.kafka]
SERVICE = "fraud_detection_v1"
CARD = 7_777_777


@pytest.fixture
def settings(services, kafka_bootstrap, tmp_path):
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.materialize import writer_for
    from featurestore.training.encoding import (
        CategoricalFeature,
        FeatureEncoding,
        NumericFeature,
    )
    from featurestore.training.model import FraudModel, fraud_mlp, save_model

    settings = services.model_copy(update={
        "api_auth": "off",
        "database_url": f"sqlite:///{tmp_path}/featurestore.db",
        "kafka_bootstrap_servers": kafka_bootstrap,
        "capture_rate": 1.0,
        "capture_topic": f"capture-{uuid.uuid4().hex[:10]}",
        "model_path": tmp_path / "model.pt",
    })
    store = apply(settings)
    writer = writer_for(settings, store, select_views(store, ["card_profile"])[0])
    writer.write(pa.table({
        "card_id": [CARD], "event_timestamp": [datetime(2026, 3, 2, 9, 0, 0, 250_000, UTC)],
        "credit_limit": [5000.0], "card_age_days": [12], "home_country": ["DE"],
        "card_tier": [None],
    }))
    writer.flush()
    writer.close()
    encoding = FeatureEncoding((
        NumericFeature("credit_limit", 3000.0, 1000.0, True),
        CategoricalFeature("home_country", ("DE", "FR")),
    ))
    save_model(FraudModel(fraud_mlp(encoding.width), encoding, "export-1", {}, SERVICE),
               settings.model_path)
    return settings


def _service_features(settings) -> list[str]:
    from featurestore.feast_config import feature_store

    service = feature_store(settings).get_feature_service(SERVICE)
    return [f.name for p in service.feature_view_projections for f in p.features]


def test_served_rows_and_scores_arrive_in_the_capture_topic(settings) -> None:
    from featurestore.api.app import create_app

    entities = {"card_id": [CARD, 1], "merchant_id": [3, 4], "amount": [10.0, 20.0]}
    with TestClient(create_app(settings)) as client:
        assert client.app.state.serving.capture is not None
        served = client.post("/v1/online-features",
                             json={"feature_service": SERVICE, "entities": entities}).json()
        full = client.post("/v1/online-features", json={
            "feature_service": SERVICE, "full_feature_names": True,
            "entities": {k: v[:1] for k, v in entities.items()},
        }).json()
        listed = client.post("/v1/online-features", json={
            "features": ["card_profile:credit_limit"], "entities": {"card_id": [CARD]}})
        assert listed.status_code == 200
        scored = client.post("/v1/score", json={"entities": entities})
        assert scored.status_code == 200, scored.text
    # Leaving the app closed its capture log, which sent what it held.
    bodies = [orjson.loads(r.value) for r in capture_records(settings.kafka_bootstrap_servers,
                                                       settings.capture_topic)]
    assert {body["subject"] for body in bodies} == {f"service:{SERVICE}"}
    features = _service_features(settings)
    rows: dict[tuple, list] = {}
    for body in bodies:
        rows.setdefault(tuple(body["columns"]), []).extend(body["rows"])
        # Only card_profile has a row online; views without one have no newest event.
        assert body["newest_events"] == {"card_profile": int(
            datetime(2026, 3, 2, 9, 0, 0, 250_000, UTC).timestamp() * 1000)}
    assert set(rows) == {tuple(features), (*features, "score")}  # the list lookup is not there

    def response_rows(body: dict, names: list[str]) -> list[list]:
        columns = dict(zip(body["metadata"]["feature_names"], body["results"]))
        return [list(row) for row in zip(*(columns[n]["values"] for n in names))]

    expected = response_rows(served, features) + response_rows(
        full, [f"{view}__{name}" for view, name in _outputs(settings)]
    )
    assert sorted(rows[tuple(features)], key=repr) == sorted(expected, key=repr)
    assert [row[:-1] for row in rows[(*features, "score")]] == response_rows(served, features)
    assert [row[-1] for row in rows[(*features, "score")]] == scored.json()["scores"]
    limits = [row[features.index("credit_limit")] for row in rows[tuple(features)]]
    assert sorted(limits, key=repr) == [5000.0, 5000.0, None]


def _outputs(settings) -> list[tuple[str, str]]:
    from featurestore.feast_config import feature_store

    service = feature_store(settings).get_feature_service(SERVICE)
    return [(p.name, f.name) for p in service.feature_view_projections for f in p.features]


def test_capture_off_leaves_the_hot_route_alone(services, tmp_path) -> None:
    from featurestore.api.app import create_app
    from featurestore.feast_config import apply

    settings = services.model_copy(update={
        "api_auth": "off", "database_url": f"sqlite:///{tmp_path}/featurestore.db",
    })
    apply(settings)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.serving.capture is None
        response = client.post("/v1/online-features", json={
            "feature_service": SERVICE,
            "entities": {"card_id": [1], "merchant_id": [1], "amount": [1.0]},
        })
        assert response.status_code == 200
