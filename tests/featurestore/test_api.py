"""The HTTP API against real Redis (the shared test db, and a Redis of the test's own to stop)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.featurestore import pipeline
from tests.featurestore.conftest import FRESH_CARD
from tests.servers import free_port, redis_server

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
SERVICE = "fraud_detection_v1"


@pytest.fixture
def settings(served):
    return served


@pytest.fixture
def client(settings):
    from featurestore.api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"api_auth": "off"}))) as client:
        yield client


def _columns(body: dict) -> dict[str, dict]:
    names = body["metadata"]["feature_names"]
    return {
        name: {k: column[k] for k in ("values", "statuses", "event_timestamps")}
        for name, column in zip(names, body["results"])
    }


def _ids(settings, view: str, key: str) -> list[int]:
    """Two entity ids that have rows in the view's offline table."""
    table = ds.dataset(str(settings.offline_dir / view), format="parquet", partitioning="hive")
    return sorted(set(table.to_table(columns=[key]).column(key).to_pylist()))[:2]


def test_service_lookup_equals_feasts_reader(settings, client) -> None:
    from featurestore.feast_config import feature_store

    cards = _ids(settings, "card_transaction_features", "card_id")
    merchants = _ids(settings, "merchant_transaction_features", "merchant_id")
    entities = {"card_id": [*cards, 999_999_999], "merchant_id": [*merchants, 3],
                "amount": [10.0, 250.5, 3.0]}
    response = client.post(
        "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
    )
    assert response.status_code == 200, response.text
    ours = _columns(response.json())
    store = feature_store(settings)
    feast = store.get_online_features(
        features=store.get_feature_service(SERVICE), entity_rows=entities
    ).to_dict()
    assert sorted(ours) == sorted(feast)
    for name, values in feast.items():
        assert ours[name]["values"] == pytest.approx(values, nan_ok=True), name
    assert None not in ours["card_txn_count_24h"]["values"][:2]
    assert None not in ours["merchant_txn_count_24h"]["values"][:2]
    # Data from March: every row is older than its view's ttl now; the unknown card is absent.
    assert ours["card_txn_count_1h"]["statuses"] == ["OUTSIDE_MAX_AGE"] * 2 + ["NOT_FOUND"]
    stamp = ours["card_txn_count_1h"]["event_timestamps"][0]
    assert stamp.startswith("2026-03-") and stamp.endswith("Z")
    assert ours["amount_to_card_mean_24h"]["statuses"][2] == "NULL_VALUE"


def test_feature_list_full_names_and_statuses(client) -> None:
    response = client.post("/v1/online-features", json={
        "features": ["card_profile:credit_limit", "card_profile:card_tier"],
        "entities": {"card_id": [FRESH_CARD, 1]},
        "full_feature_names": True,
    })
    assert response.status_code == 200, response.text
    columns = _columns(response.json())
    assert list(columns) == ["card_id", "card_profile__credit_limit", "card_profile__card_tier"]
    assert columns["card_profile__credit_limit"]["values"][0] == 5000.0
    assert columns["card_profile__credit_limit"]["statuses"] == ["PRESENT", "OUTSIDE_MAX_AGE"]
    assert columns["card_profile__card_tier"]["statuses"][0] == "NULL_VALUE"


def _write_online(settings, view_name: str, key: str, values: dict[int, float]) -> None:
    """Fresh online rows of `view_name` for the ids of `values`: every numeric feature holds the
    id's value (integers rounded down), every other feature is null."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import required_schema, writer_for

    store = feature_store(settings)
    view = select_views(store, [view_name])[0]
    schema = required_schema(view)
    now = [datetime.now(UTC)] * len(values)
    columns = {key: list(values), view.offline.timestamp_field: now}
    created = view.offline.created_timestamp_column
    if created:  # Feast's writer (other online stores) reads it
        schema = schema.append(pa.field(created, pa.timestamp("us", tz="UTC")))
        columns[created] = now
    for field in schema:
        if field.name in columns:
            continue
        if pa.types.is_integer(field.type):
            columns[field.name] = [int(v) for v in values.values()]
        elif pa.types.is_floating(field.type):
            columns[field.name] = [float(v) for v in values.values()]
        else:
            columns[field.name] = [None] * len(values)
    writer = writer_for(settings, store, view)
    writer.write(pa.table(columns, schema=schema))
    writer.flush()
    writer.close()


@pytest.mark.parametrize(
    ("features", "key", "ids"),
    [
        # Issue 12's repros: unknown entities among values of 2-byte varints, whose bytes add up
        # to what as many 1-byte values would take.
        (["card_profile:card_age_days"], "card_id",
         [987_654_321, 7_000_001, 7_000_002, 987_654_322, 7_000_003, 7_000_004]),
        (["merchant_transaction_features:merchant_txn_count_24h",
          "merchant_transaction_features:merchant_amount_sum_24h"], "merchant_id",
         [7_000_021, 62_000_000, 999_999_999, 7_000_005, 7_000_006]),
    ],
)
def test_a_batch_lookup_equals_lookups_one_by_one_and_feasts_reader(
    settings, client, features, key, ids
) -> None:
    from featurestore.feast_config import feature_store

    _write_online(settings, "card_profile", "card_id",
                  {7_000_001: 2811, 7_000_002: 1285, 7_000_003: 1675, 7_000_004: 222})
    _write_online(settings, "merchant_transaction_features", "merchant_id",
                  {7_000_021: 16_384, 7_000_005: 128, 7_000_006: 200})

    def lookup(batch: list[int]) -> dict[str, dict]:
        response = client.post(
            "/v1/online-features", json={"features": features, "entities": {key: batch}}
        )
        assert response.status_code == 200, response.text
        return _columns(response.json())

    batch = lookup(ids)
    alone = [lookup([i]) for i in ids]
    feast = feature_store(settings).get_online_features(
        features=features, entity_rows=[{key: i} for i in ids]
    ).to_dict()
    for reference in features:
        name = reference.partition(":")[2]
        column = batch[name]
        assert column["values"] == [one[name]["values"][0] for one in alone], name
        assert column["statuses"] == [one[name]["statuses"][0] for one in alone], name
        assert column["values"] == feast[name], name
        for value, status in zip(column["values"], column["statuses"]):
            assert (value is None) == (status in ("NOT_FOUND", "NULL_VALUE")), (name, value, status)
    if key == "card_id":
        assert batch["card_age_days"]["values"] == [None, 2811, 1285, None, 1675, 222]
        assert batch["card_age_days"]["statuses"][:2] == ["NOT_FOUND", "PRESENT"]
    else:
        counts = batch["merchant_txn_count_24h"]
        assert counts["values"] == [16_384, None, None, 128, 200]
        assert counts["statuses"][1:3] == ["NOT_FOUND"] * 2


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"feature_service": "fraud_v9", "entities": {"card_id": [1]}}, 404, "fraud_v9"),
        ({"features": ["card_profile:nope"], "entities": {"card_id": [1]}}, 404, "nope"),
        ({"features": ["no_view:x"], "entities": {"card_id": [1]}}, 404, "no_view"),
        ({"features": ["credit_limit"], "entities": {"card_id": [1]}}, 400, "credit_limit"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card": [1]}}, 400, "card"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": ["1"]}}, 400,
         "card_id"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": [True]}}, 400,
         "card_id"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": [None]}}, 400,
         "card_id"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": [2**63]}}, 400,
         "64-bit"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": []}}, 400,
         "no entities"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1]}}, 400,
         "amount"),
        ({"feature_service": SERVICE,
          "entities": {"card_id": [1, 2], "merchant_id": [1], "amount": [1.0]}}, 400, "length"),
        ({"features": ["card_profile:credit_limit"], "entities": {"card_id": list(range(1001))}},
         413, "1000"),
        ({"entities": {"card_id": [1]}}, 422, "exactly one"),
        ({"feature_service": SERVICE}, 422, "entities"),
        ({"feature_service": SERVICE, "entities": {"card_id": 1}}, 422, "entities.card_id"),
    ],
)
def test_bad_input_gets_a_4xx_naming_it(client, body, status, named) -> None:
    response = client.post("/v1/online-features", json=body)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]


SMALL_MEAN_CARD, LARGE_MEAN_CARD, ZERO_LIMIT_CARD = 7_000_010, 7_000_011, 7_000_012


def _post_raw(client, path: str, body: str):
    """A body as written: Python's json would not write these literals the way clients do."""
    return client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e309", "1" + "0" * 400])
def test_non_finite_request_values_are_a_400_naming_the_field(client, literal) -> None:
    response = _post_raw(client, "/v1/online-features", (
        f'{{"feature_service": "{SERVICE}", "entities": {{"card_id": [1, 2], '
        f'"merchant_id": [1, 2], "amount": [10.0, {literal}]}}}}'
    ))
    assert response.status_code == 400, response.text
    assert "'amount' must hold finite numbers" in response.json()["error"]["message"]


def test_an_on_demand_value_a_request_makes_infinite_is_a_400_naming_the_field(
    settings, client
) -> None:
    _write_online(settings, "card_transaction_features", "card_id", {SMALL_MEAN_CARD: 0.5})
    response = client.post("/v1/online-features", json={
        "features": ["transaction_amount_ratio:amount_to_card_mean_24h"],
        "entities": {"card_id": [SMALL_MEAN_CARD, SMALL_MEAN_CARD], "amount": [1.0, 1e308]},
    })
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "{'amount': 1e+308} of entity 1" in message
    assert "amount_to_card_mean_24h inf" in message


def test_an_on_demand_value_stored_features_make_infinite_has_no_value(settings, client) -> None:
    from feast import Field
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Float64

    from featurestore.feast_config import feature_store

    store = feature_store(settings)

    @on_demand_feature_view(
        sources=[store.get_feature_view("card_profile")],
        schema=[Field(name="limit_inverse", dtype=Float64)],
        mode="pandas",
    )
    def limit_inverse(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"limit_inverse": 1 / inputs["credit_limit"]})

    _write_online(settings, "card_profile", "card_id", {ZERO_LIMIT_CARD: 0})
    time.sleep(1.1)  # the registry stamps changes to the second
    store.apply([limit_inverse])
    try:
        client.app.state.serving.refresh()
        response = client.post("/v1/online-features", json={
            "features": ["limit_inverse:limit_inverse"],
            "entities": {"card_id": [FRESH_CARD, ZERO_LIMIT_CARD]},
        })
        assert response.status_code == 200, response.text
        column = _columns(response.json())["limit_inverse"]
        assert column["values"] == [1 / 5000, None]
        assert column["statuses"] == ["PRESENT", "NULL_VALUE"]
    finally:
        store.delete_feature_view("limit_inverse")


def test_malformed_json_is_422(client) -> None:
    response = client.post(
        "/v1/online-features", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "malformed_request"


def _post_json_text(client, path: str, text: str):
    """A body as JSON text: json.dumps writes ints over 64 bits and escapes lone surrogates,
    both of which httpx's own encoder refuses."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


_HUGE_INT = {"feature_service": 2**64, "entities": {"card_id": [1]}}
# A lone surrogate in a key: Python's JSON decoder (FastAPI's bodies) takes it, pydantic's
# (the lookup route's) refuses the whole body.
_SURROGATE = {"feature_service": SERVICE, "entities": {"card_id": [1]}, "\ud800": 2**70}
_MANY_BAD = {"features": list(range(5_000)), "entities": {"card_id": [1]}}
_LONG_KEY = {"feature_service": SERVICE, "entities": {"card_id": [1]}, "k" * 10_000: 1}


@pytest.mark.parametrize(("path", "body", "named"), [
    ("/v1/online-features", _HUGE_INT, "feature_service"),
    ("/v1/score", _HUGE_INT, "feature_service"),
    ("/v1/datasets", _HUGE_INT, "feature_service"),
    ("/v1/online-features", _SURROGATE, "Invalid JSON"),
    ("/v1/score", _SURROGATE, "body"),
    ("/v1/datasets", _SURROGATE, "body"),
    ("/v1/online-features", _MANY_BAD, "and 4980 more"),
    ("/v1/datasets", _MANY_BAD, "and 4980 more"),
    ("/v1/online-features", _LONG_KEY, "k" * 80 + ": Extra inputs"),
    ("/v1/score", _LONG_KEY, "k" * 80 + ": Extra inputs"),
])
def test_a_422_names_the_fields_and_never_echoes_the_input(client, path, body, named) -> None:
    import json

    response = _post_json_text(client, path, json.dumps(body))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "malformed_request"
    assert named in error["message"], error["message"]
    assert all(set(detail) == {"type", "loc", "msg"} for detail in error["details"])
    assert len(response.content) < 5_000


def test_framework_errors_have_the_error_shape(client) -> None:
    unknown = client.get("/v1/nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": "not_found", "message": "no route GET /v1/nope"}
    put = client.put("/v1/silences")
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, OPTIONS, POST"
    assert put.json()["error"]["code"] == "method_not_allowed"
    for path, allowed in [("/v1/silences", "GET, OPTIONS, POST"),
                          ("/v1/alerts/1/acknowledge", "OPTIONS, POST"),
                          ("/v1/online-features", "OPTIONS, POST")]:
        options = client.options(path)
        assert options.status_code == 204, path
        assert options.headers["allow"] == allowed, path
    assert client.options("/v1/nope").status_code == 404
    for path in ("/v1/datasets", "/v1/silences", "/v1/score"):
        for content in (b'{"entities": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000):
            response = client.post(path, content=content,
                                   headers={"content-type": "application/json"})
            assert response.status_code in (400, 422), (path, response.text)
            assert set(response.json()["error"]) >= {"code", "message"}, path


def test_every_status_a_route_answers_is_in_the_openapi_document(client) -> None:
    spec = client.get("/openapi.json").json()
    open_routes = {"/healthz", "/readyz"}
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            if path not in open_routes:
                assert {"401", "403", "503"} <= documented, (method, path)
                assert operation["security"] == [{"apiKey": []}], (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= documented, (method, path)
            for status, response in operation["responses"].items():
                if status.startswith("4"):  # every error in the one shape
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "429" in spec["paths"]["/v1/datasets"]["post"]["responses"]
    assert "409" in spec["paths"]["/v1/score"]["post"]["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    schemas = spec["components"]["schemas"]
    one_of = schemas["DatasetRequest"]["oneOf"]
    assert [branch["required"] for branch in one_of] == [["feature_service"], ["features"]]
    lookup = spec["paths"]["/v1/online-features"]["post"]["requestBody"]  # inline: its own parser
    assert lookup["content"]["application/json"]["schema"]["oneOf"] == one_of
    assert [b["required"] for b in schemas["SilenceRequest"]["oneOf"]] == [["minutes"],
                                                                           ["ends_at"]]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message"}


def test_catalog_and_openapi(client) -> None:
    from featurestore.api.schemas import CatalogServices, CatalogViews

    CatalogViews.model_validate_json(client.get("/v1/feature-views").content, strict=True)
    CatalogServices.model_validate_json(client.get("/v1/feature-services").content, strict=True)
    views = client.get("/v1/feature-views").json()["feature_views"]
    assert {v["name"] for v in views} == {
        "card_profile", "card_transaction_features", "merchant_transaction_features"
    }
    service = client.get(f"/v1/feature-services/{SERVICE}").json()
    assert "transaction_amount_ratio:amount_to_card_mean_24h" in service["features"]
    assert client.get("/v1/feature-views/nope").status_code == 404
    spec = client.get("/openapi.json").json()
    for path in ("/v1/online-features", "/v1/score", "/v1/datasets", "/healthz", "/readyz"):
        assert path in spec["paths"]
    lookup = spec["paths"]["/v1/online-features"]["post"]
    request = lookup["requestBody"]["content"]["application/json"]["schema"]
    assert request["examples"][0]["feature_service"] == SERVICE
    # Exactly the documented statuses: the answer in its schema, and each error the route gives.
    responses = lookup["responses"]
    assert set(responses) == {"200", "400", "401", "403", "404", "413", "422", "503"}
    assert responses["200"]["content"]["application/json"]["schema"]["anyOf"] == [
        {"$ref": "#/components/schemas/OnlineFeaturesResponse"},
        {"$ref": "#/components/schemas/CompactOnlineFeaturesResponse"},  # ?format=compact
    ]
    assert [(p["name"], p["schema"]["enum"]) for p in lookup["parameters"]] == [
        ("format", ["feast", "compact"])
    ]
    assert responses["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }


def test_api_keys_and_scopes(settings) -> None:
    from featurestore.api.app import create_app
    from featurestore.apikeys import create_key, revoke_key
    from featurestore.db import engine

    database = engine(settings)
    reader, _ = create_key(database, "serving", ["features:read"])
    exporter, _ = create_key(database, "training", ["datasets:export"])
    admin, _ = create_key(database, "ops", ["admin"])
    revoked, revoked_key = create_key(database, "old", ["features:read"])
    revoke_key(database, revoked_key.key_id)
    body = {"features": ["card_profile:credit_limit"], "entities": {"card_id": [1]}}

    def post(token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.post("/v1/online-features", json=body, headers=headers)

    with TestClient(create_app(settings)) as client:
        assert post(reader).status_code == 200
        assert post(admin).status_code == 200
        missing = post(None)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["error"]["message"]
        assert post(reader[:-2] + "xx").status_code == 401
        assert post("not-a-key").status_code == 401
        assert post(revoked).status_code == 401
        forbidden = post(exporter)
        assert forbidden.status_code == 403
        assert "features:read" in forbidden.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert 'featurestore_api_requests_total{code="403",route="/v1/online-features"}' in (
            metrics.text
        )


def test_redis_down_is_a_prompt_503_then_recovers(settings, tmp_path) -> None:
    from featurestore.api.app import create_app

    port = free_port()
    server = redis_server(port, tmp_path)
    own = settings.model_copy(update={
        "api_auth": "off", "redis_url": f"redis://127.0.0.1:{port}/0",
        "serve_redis_timeout_seconds": 0.5,
    })
    body = {"features": ["card_profile:credit_limit"], "entities": {"card_id": [1]}}
    try:
        with TestClient(create_app(own)) as client:
            assert client.post("/v1/online-features", json=body).status_code == 200
            server.kill()
            server.wait(timeout=10)
            started = time.monotonic()
            down = client.post("/v1/online-features", json=body)
            assert time.monotonic() - started < 2
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert down.json()["error"]["code"] == "online_store_unavailable"
            assert client.get("/readyz").status_code == 503
            server = redis_server(port, tmp_path)
            recovered = client.post("/v1/online-features", json=body)
            assert recovered.status_code == 200
            assert _columns(recovered.json())["credit_limit"]["statuses"] == ["NOT_FOUND"]
            assert client.get("/readyz").status_code == 200
    finally:
        server.kill()
        server.wait(timeout=10)


def test_registry_changes_are_picked_up(settings, client) -> None:
    from feast import FeatureService

    from featurestore.feast_config import feature_store

    store = feature_store(settings)
    time.sleep(1.1)  # the registry stamps changes to the second
    store.apply([FeatureService(name="profile_only", features=[store.get_feature_view("card_profile")])])
    body = {"feature_service": "profile_only", "entities": {"card_id": [FRESH_CARD]}}
    assert client.post("/v1/online-features", json=body).status_code == 404
    assert client.app.state.serving.refresh()
    response = client.post("/v1/online-features", json=body)
    assert response.status_code == 200
    assert _columns(response.json())["credit_limit"]["values"] == [5000.0]
    store.delete_feature_service("profile_only")


def test_pandas_mode_on_demand_views_are_computed_too(settings, client) -> None:
    from feast import Field, RequestSource
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Float64

    from featurestore.feast_config import feature_store

    store = feature_store(settings)
    request = RequestSource(name="limit_request", schema=[Field(name="amount", dtype=Float64)])

    @on_demand_feature_view(
        sources=[store.get_feature_view("card_profile"), request],
        schema=[Field(name="amount_to_limit", dtype=Float64)],
        mode="pandas",
    )
    def amount_to_limit(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"amount_to_limit": inputs["amount"] / inputs["credit_limit"]})

    time.sleep(1.1)
    store.apply([request, amount_to_limit])
    try:
        client.app.state.serving.refresh()
        response = client.post("/v1/online-features", json={
            "features": ["amount_to_limit:amount_to_limit"],
            "entities": {"card_id": [FRESH_CARD, 999_999_999], "amount": [50.0, 1.0]},
        })
        assert response.status_code == 200, response.text
        column = _columns(response.json())["amount_to_limit"]
        assert column["values"] == [0.01, None]
        assert column["statuses"] == ["PRESENT", "NULL_VALUE"]
    finally:
        store.delete_feature_view("amount_to_limit")


def _latest_transactions(settings) -> pa.Table:
    """Transactions that are the newest of both their card and their merchant: their offline
    feature rows are exactly what the online store holds."""
    from fraud_example.labels import labeled_transactions

    rows = labeled_transactions(settings, pipeline.START, pipeline.END).to_pandas()
    newest_card = rows.groupby("card_id")["event_timestamp"].transform("max")
    newest_merchant = rows.groupby("merchant_id")["event_timestamp"].transform("max")
    chosen = rows[(rows.event_timestamp == newest_card) & (rows.event_timestamp == newest_merchant)]
    # Same-instant split payments share a timestamp: keep cards with one such row.
    chosen = chosen[~chosen.duplicated("card_id", keep=False)]
    return pa.Table.from_pandas(chosen.head(8), preserve_index=False)


def test_online_score_equals_the_score_of_the_offline_row(settings, tmp_path) -> None:
    from featurestore.api.app import create_app

    entities = _latest_transactions(settings)
    assert entities.num_rows >= 3
    model, out = pipeline.untrained_model(settings, entities, tmp_path, SERVICE)
    offline = model.score(pq.read_table(out.path))

    own = settings.model_copy(update={"api_auth": "off", "model_path": tmp_path / "model.pt"})
    with TestClient(create_app(own)) as client:
        body = {"entities": {
            "card_id": entities.column("card_id").to_pylist(),
            "merchant_id": entities.column("merchant_id").to_pylist(),
            "amount": entities.column("amount").to_pylist(),
        }}
        response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == {"export_id": out.export_id, "feature_service": SERVICE}
    assert response.json()["scores"] == offline.tolist()
    assert len(set(offline.tolist())) > 1  # a real comparison, not constants


def test_a_score_is_a_number_or_a_400_naming_the_request(settings, tmp_path) -> None:
    from featurestore.api.app import create_app

    pipeline.untrained_model(settings, _latest_transactions(settings), tmp_path, SERVICE)
    _write_online(settings, "card_transaction_features", "card_id",
                  {SMALL_MEAN_CARD: 0.5, LARGE_MEAN_CARD: 50})
    own = settings.model_copy(update={"api_auth": "off", "model_path": tmp_path / "model.pt"})

    def score(card: int, amount: str):
        return _post_raw(client, "/v1/score", (
            f'{{"entities": {{"card_id": [{card}], "merchant_id": [1], "amount": [{amount}]}}}}'
        ))

    with TestClient(create_app(own)) as client:
        for literal in ("Infinity", "NaN", "1e309"):
            response = score(LARGE_MEAN_CARD, literal)
            assert response.status_code == 400, response.text
            assert "'amount' must hold finite numbers" in response.json()["error"]["message"]
        # The ratio to a mean below 1 is infinite; to a mean of 50 beyond float32.
        response = score(SMALL_MEAN_CARD, "1e308")
        assert response.status_code == 400, response.text
        assert "{'amount': 1e+308}" in response.json()["error"]["message"]
        response = score(LARGE_MEAN_CARD, "1e308")
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert "'amount': 1e+308" in message and "['amount_to_card_mean_24h']" in message
        response = score(LARGE_MEAN_CARD, "100.0")
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["scores"][0] <= 1


def test_score_without_a_model_is_a_clear_503(settings, tmp_path) -> None:
    from featurestore.api.app import create_app

    own = settings.model_copy(update={"api_auth": "off", "model_path": tmp_path / "none.pt"})
    with TestClient(create_app(own)) as client:
        response = client.post("/v1/score", json={"entities": {"card_id": [1]}})
    assert response.status_code == 503
    assert "featurestore train" in response.json()["error"]["message"]


def test_dataset_job_equals_a_direct_export(settings, client, tmp_path) -> None:
    from featurestore.export import export

    entities = _latest_transactions(settings)
    direct = pq.read_table(
        export(settings, entities, tmp_path / "direct.parquet", feature_service=SERVICE).path
    )
    columns = entities.to_pydict()
    columns["event_timestamp"] = [t.isoformat() for t in columns["event_timestamp"]]
    created = client.post("/v1/datasets", json={"feature_service": SERVICE, "entities": columns})
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/v1/datasets/{job['id']}"
    deadline = time.monotonic() + 60
    while job["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get(f"/v1/datasets/{job['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["rows"] == entities.num_rows
    download = client.get(job["download"])
    assert download.status_code == 200
    (tmp_path / "job.parquet").write_bytes(download.content)
    via_api = pq.read_table(tmp_path / "job.parquet")
    assert via_api.to_pylist() == direct.to_pylist()
    (settings.exports_dir / f"{job['id']}.parquet").unlink()  # an operator cleaned up
    gone = client.get(job["download"])
    assert gone.status_code == 404, gone.text
    assert gone.json()["error"]["code"] == "dataset_gone"


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"feature_service": "nope", "entities": {"card_id": [1],
          "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 404, "nope"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1]}}, 400, "event_timestamp"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1],
          "amount": [1.0], "event_timestamp": ["yesterday"]}}, 400, "event_timestamp"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "amount": [1.0],
          "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400, "merchant_id"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1],
          "amount": [True], "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400,
         "column 'amount' is bool, expected double"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1],
          "amount": ["12.5"], "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400,
         "column 'amount' is string, expected double"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1],
          "amount": [1.0], "event_timestamp": ["0001-01-01T00:00:00+14:00"]}}, 400,
         "event_timestamp[0] 0001-01-01T00:00:00+14:00 is outside years 1 to 9999"),
        # Rejected before a job starts, not a job failing later on an Arrow error.
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [1],
          "amount": [1.0], "event_timestamp": ["2026-03-02T00:00:00Z"], "label": [{}]}}, 400,
         "'label' holds a JSON object"),
        ({"feature_service": SERVICE, "entities": {"card_id": [[1]], "merchant_id": [1],
          "amount": [1.0], "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400,
         "'card_id' holds a JSON array"),
        ({"feature_service": SERVICE, "entities": {"card_id": [2**64], "merchant_id": [1],
          "amount": [1.0], "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400, "64 bits"),
        ({"feature_service": SERVICE, "entities": {"card_id": [1], "merchant_id": [-(2**63) - 1],
          "amount": [1.0], "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 400, "merchant_id"),
        ({"features": [], "entities": {"card_id": [1],
          "event_timestamp": ["2026-03-02T00:00:00Z"]}}, 422, "features"),
    ],
)
def test_bad_dataset_requests_are_4xx(client, body, status, named) -> None:
    response = client.post("/v1/datasets", json=body)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]
    assert client.get("/v1/datasets/ds-unknown").status_code == 404
    nul = client.get("/v1/datasets/ds-%00/download")
    assert nul.status_code == 422 and "job_id" in nul.json()["error"]["message"]


def test_other_online_stores_go_through_feasts_reader(configure) -> None:
    from featurestore.api.app import create_app
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.materialize import writer_for

    # The embedded profile: SQLite registry and Feast's SQLite online store of the test's own.
    embedded = configure(api_auth="off")
    store = apply(embedded)
    writer = writer_for(embedded, store, select_views(store, ["card_profile"])[0])
    # Feast's SQLite store keeps whole seconds.
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    writer.write(pa.table({
        "card_id": [FRESH_CARD], "event_timestamp": [written],
        "credit_limit": [777.0], "card_age_days": [3], "home_country": ["FR"],
        "card_tier": ["gold"],
    }))
    writer.flush()
    with TestClient(create_app(embedded)) as client:
        assert client.app.state.serving.pool is None
        response = client.post("/v1/online-features", json={
            "features": ["card_profile:credit_limit", "card_profile:card_tier"],
            "entities": {"card_id": [FRESH_CARD, 999_999_999]},
        })
        assert response.status_code == 200, response.text
        columns = _columns(response.json())
        assert columns["credit_limit"]["values"] == [777.0, None]
        assert columns["card_tier"]["statuses"] == ["PRESENT", "NOT_FOUND"]
        # Event times written as the Redis path writes them.
        stamp = written.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        assert columns["credit_limit"]["event_timestamps"] == [stamp, None]
        bad = client.post("/v1/online-features", json={
            "features": ["card_profile:nope"], "entities": {"card_id": [1]}})
        assert bad.status_code == 404
        # Feast's reader computes on-demand features itself: the same check of its results.
        _write_online(embedded, "card_transaction_features", "card_id", {SMALL_MEAN_CARD: 0.5})
        ratio = client.post("/v1/online-features", json={
            "features": ["transaction_amount_ratio:amount_to_card_mean_24h"],
            "entities": {"card_id": [SMALL_MEAN_CARD, SMALL_MEAN_CARD], "amount": [1.0, 1e308]},
        })
        assert ratio.status_code == 400, ratio.text
        assert "{'amount': 1e+308} of entity 1" in ratio.json()["error"]["message"]
