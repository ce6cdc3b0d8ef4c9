"""`?format=compact` carries exactly the values, statuses and event times of Feast's shape.

Random rows are written to the real Redis through our writer (nulls, NaN/inf, 64-bit ints, any
unicode), looked up among entities never written, and both answers of the real API compared."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
FEATURES = ["card_profile:credit_limit", "card_profile:card_age_days",
            "card_profile:home_country", "card_profile:card_tier"]
# Each example writes ids of its own: a rewrite with an older event time would be refused.
_FIRST_IDS = itertools.count(8_000_000_000, 100)
_NEVER_WRITTEN = 9_000_000_000


@pytest.fixture(scope="module")
def client(served):
    from featurestore.api.app import create_app

    with TestClient(create_app(served.model_copy(update={"api_auth": "off"}))) as client:
        yield client


def _write_card_profiles(settings, rows: list[dict]) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import required_schema, writer_for

    store = feature_store(settings)
    view = select_views(store, ["card_profile"])[0]
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    writer = writer_for(settings, store, view)
    writer.write(pa.table(columns, schema=required_schema(view)))
    writer.flush()
    writer.close()


def as_feast(compact: dict) -> dict:
    """The Feast-shaped answer a compact one stands for."""
    names = compact["status_codes"]
    return {"metadata": {"feature_names": compact["feature_names"]}, "results": [
        {"values": v, "statuses": [names[str(c)] for c in s], "event_timestamps": t}
        for v, s, t in zip(compact["values"], compact["statuses"], compact["event_timestamps"])
    ]}


_NOW = datetime.now(UTC)
_ROW = st.fixed_dictionaries({
    "credit_limit": st.none() | st.floats(allow_nan=True, allow_infinity=True),
    "card_age_days": st.none() | st.integers(-(2**63), 2**63 - 1),
    "home_country": st.none() | st.text(st.characters(exclude_categories=("Cs",))),
    "card_tier": st.none() | st.text(max_size=3),
    # Some rows fresh, some past the view's 2-day ttl (OUTSIDE_MAX_AGE).
    "age_hours": st.sampled_from([0, 1, 49]),
})


@hypothesis_settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=12),
       order=st.randoms(use_true_random=False), unknown=st.integers(0, 4))
def test_the_compact_answer_holds_what_feasts_shape_holds(served, client, rows, order,
                                                          unknown) -> None:
    first = next(_FIRST_IDS)
    stored = {first + n: row for n, row in enumerate(rows)}
    _write_card_profiles(served, [
        {"card_id": card, "event_timestamp": _NOW - timedelta(hours=row["age_hours"]),
         **{k: v for k, v in row.items() if k != "age_hours"}}
        for card, row in stored.items()
    ])
    asked = [*stored, *range(_NEVER_WRITTEN, _NEVER_WRITTEN + unknown)]  # NOT_FOUND
    order.shuffle(asked)
    body = {"features": FEATURES, "entities": {"card_id": asked}}
    feast_shaped = client.post("/v1/online-features", json=body)
    compact = client.post("/v1/online-features", params={"format": "compact"}, json=body)
    assert feast_shaped.status_code == compact.status_code == 200, compact.text
    assert as_feast(compact.json()) == feast_shaped.json()
    # And the comparison is not vacuous: what was written is what comes back.
    answer = dict(zip(compact.json()["feature_names"], compact.json()["values"]))
    for card, age, limit, country in zip(asked, answer["card_age_days"], answer["credit_limit"],
                                         answer["home_country"]):
        row = stored.get(card, {"card_age_days": None, "credit_limit": None,
                                "home_country": None})
        assert age == row["card_age_days"]
        assert country == row["home_country"]
        # JSON has no NaN or infinity: both shapes carry them as null.
        written = row["credit_limit"]
        assert limit == (None if written is None or not math.isfinite(written) else written)


@pytest.mark.parametrize("query", ["format=arrow", "format=COMPACT", "format=%ff",
                                   "format=%ed%a0%80", "format=" + "x" * 10_000, "format="])
def test_an_unknown_format_is_a_422_naming_it(client, query) -> None:
    body = {"features": FEATURES, "entities": {"card_id": [1]}}
    response = client.post(f"/v1/online-features?{query}", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"][0]["loc"] == ["query", "format"]
    assert "xxxx" not in error["message"]  # the input is not echoed back

