"""The raw ASGI lookup route answers exactly as the FastAPI route it stands in for.

Two apps of the same settings (API keys on): one with the raw route (`create_app()`, what
`featurestore serve` runs), one without (`raw_lookup=False`: FastAPI's route serves the lookup).
Hostile bodies, query strings and headers go to both; status, headers and body must be equal
byte for byte. Then the same with Redis down (503 + Retry-After), and the metrics' route label."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.featurestore.conftest import FRESH_CARD
from tests.servers import free_port

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
PATH = "/v1/online-features"
SERVICE = "fraud_detection_v1"


@pytest.fixture(scope="module")
def tokens(served) -> dict[str, str]:
    from featurestore.apikeys import create_key
    from featurestore.db import engine

    database = engine(served)
    return {
        "reader": create_key(database, "raw-reader", ["features:read"])[0],
        "other": create_key(database, "raw-other", ["datasets:export"])[0],
    }


def _pair(settings):
    from featurestore.api.app import create_app

    raw = TestClient(create_app(settings), raise_server_exceptions=False)
    framework = TestClient(create_app(settings, raw_lookup=False), raise_server_exceptions=False)
    return raw, framework


@pytest.fixture(scope="module")
def apps(served):
    raw, framework = _pair(served.model_copy(update={"serve_max_body_bytes": 2048}))
    with raw, framework:
        yield raw, framework


def _answer(client: TestClient, body: bytes, query: str, headers: dict[str, str]):
    response = client.post(f"{PATH}{query}", content=body, headers=headers)
    return response.status_code, sorted(response.headers.items()), response.content


def _same(apps, body: bytes, query: str = "", headers: dict[str, str] | None = None) -> int:
    raw, framework = apps
    ours = _answer(raw, body, query, headers or {})
    reference = _answer(framework, body, query, headers or {})
    assert ours == reference, (body[:200], query, headers)
    return ours[0]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
# Entity values of every wrong kind: huge ints (over 64 bits, over any float), NaN and infinity
# (Python's JSON writes them), lone surrogates (escaped: the body stays UTF-8), nulls, booleans.
_VALUE_TEXT = st.sampled_from([
    "1", "-1", "0", str(2**63), str(-(2**63) - 1), "9" * 400, "1e309", "NaN", "Infinity",
    "-Infinity", "1.5", "true", "null", '"1"', '"\\ud800"', '"\\udfff x"', "[]", "{}", "[1]",
    str(FRESH_CARD),
])
_COLUMN = st.lists(_VALUE_TEXT, max_size=3).map(lambda vs: "[" + ",".join(vs) + "]")
_KEY = st.sampled_from(["card_id", "merchant_id", "amount", "nope", "\\ud800", ""])


@st.composite
def _lookup_text(draw) -> bytes:
    """A lookup body as text, members repeated or wrong at will (duplicate keys included)."""
    members = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["feature_service", "features", "entities",
                                     "full_feature_names", "extra"]))
        if name == "entities":
            value = "{" + ",".join(f'"{k}":{c}' for k, c in draw(
                st.lists(st.tuples(_KEY, _COLUMN | _VALUE_TEXT), max_size=4))) + "}"
        elif name == "feature_service":
            value = draw(st.sampled_from([f'"{SERVICE}"', '"nope"', "1", "null", '"\\ud800"']))
        elif name == "features":
            value = draw(st.sampled_from(['["card_profile:credit_limit"]', "[]", '["x"]',
                                          '["card_profile:nope"]', '"card_profile:credit_limit"',
                                          '["card_profile:credit_limit",1]']))
        else:
            value = draw(_VALUE_TEXT)
        members.append(f'"{name}":{value}')
    return ("{" + ",".join(members) + "}").encode()


_BODY = (
    _lookup_text()
    | _JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)  # not JSON, not UTF-8
    | st.just(b"")
    | st.just(b"{" * 3000)  # over the body limit
)
_QUERY = st.sampled_from(["", "?format=compact", "?format=feast", "?format=xml", "?format=",
                          "?format=compact&format=feast", "?x=1", "?format=%FF"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_BODY, query=_QUERY,
       key=st.sampled_from(["reader", "other", "bogus", "missing", "basic"]),
       content_type=st.sampled_from(["application/json", "text/plain", None]))
@example(body=b'{"feature_service":"fraud_detection_v1","entities":{"card_id":[1],'
              b'"card_id":[2],"merchant_id":[3],"amount":[NaN]}}',
         query="", key="reader", content_type="application/json")
@example(body=b'{"features":["card_profile:credit_limit"],"entities":{"card_id":[%d]}}'
              % FRESH_CARD, query="?format=compact", key="reader", content_type=None)
def test_the_raw_route_answers_as_fastapis(apps, tokens, body, query, key, content_type) -> None:
    headers = {}
    if key in tokens:
        headers["Authorization"] = f"Bearer {tokens[key]}"
    elif key == "bogus":
        headers["Authorization"] = "Bearer fsk_bogus"
    elif key == "basic":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    if content_type is not None:
        headers["Content-Type"] = content_type
    _same(apps, body, query, headers)


def test_every_status_of_the_route_is_reached(apps, tokens) -> None:
    """The comparison above is worth something only if both apps answer more than errors."""
    reader = {"Authorization": f"Bearer {tokens['reader']}"}
    lookup = b'{"features":["card_profile:credit_limit"],"entities":{"card_id":[%d]}}' % FRESH_CARD
    assert _same(apps, lookup, "", reader) == 200
    assert _same(apps, lookup, "?format=compact", reader) == 200
    assert _same(apps, lookup) == 401
    assert _same(apps, lookup, "", {"Authorization": f"Bearer {tokens['other']}"}) == 403
    assert _same(apps, b'{"features":["nope:x"],"entities":{"card_id":[1]}}', "", reader) == 404
    assert _same(apps, b'{"features":["card_profile:credit_limit"],"entities":{"card_id":'
                 b'["a"]}}', "", reader) == 400
    assert _same(apps, b"{" * 3000, "", reader) == 413
    assert _same(apps, b"{", "", reader) == 422


def test_redis_down_is_the_same_503(served, tokens) -> None:
    down = served.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                     "serve_redis_timeout_seconds": 1.0})
    raw, framework = _pair(down)
    with raw, framework:
        reader = {"Authorization": f"Bearer {tokens['reader']}"}
        body = b'{"features":["card_profile:credit_limit"],"entities":{"card_id":[1]}}'
        assert _same((raw, framework), body, "", reader) == 503
        assert raw.post(PATH, content=body, headers=reader).headers["retry-after"]


def test_the_raw_route_is_counted_under_its_route(served, tokens) -> None:
    from featurestore.apikeys import create_key
    from featurestore.db import engine

    admin = create_key(engine(served), "raw-admin", ["admin"])[0]
    raw, _ = _pair(served)
    with raw:
        before = _count(raw, admin)
        response = raw.post(PATH, content=b"{", headers={
            "Authorization": f"Bearer {tokens['reader']}"})
        assert response.status_code == 422
        assert _count(raw, admin) == before + 1


def _count(client: TestClient, admin: str) -> float:
    text = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    sample = f'featurestore_api_requests_total{{code="422",route="{PATH}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample))
