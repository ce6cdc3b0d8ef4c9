"""Read plans of the example registry (SQLite, no server): what a lookup reads, in which order,
the HMGET it sends, the errors naming bad references, and the plan cache."""

from __future__ import annotations

from itertools import combinations

import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.value_type import ValueType
from hypothesis import example, given, settings
from hypothesis import strategies as st

from featurestore.errors import TooManyFeaturesError, UnknownNameError
from featurestore.online import resp
from featurestore.online.catalog import _PLAN_CACHE_SIZE, Catalog

SERVICE = "fraud_detection_v1"
RATIO = "transaction_amount_ratio:amount_to_card_mean_24h"


@pytest.fixture(scope="module")
def store(example_store):
    return example_store


@pytest.fixture
def catalog(store) -> Catalog:
    return Catalog(store, max_features=4)


def test_a_service_plan_outputs_its_features_in_the_services_order(catalog, store) -> None:
    plan = catalog.plan_for_service(SERVICE)
    service = store.get_feature_service(SERVICE)
    assert plan.feature_refs == [
        f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features
    ]
    assert plan.join_keys == ("card_id", "merchant_id")
    assert plan.key_types == {"card_id": ValueType.INT64, "merchant_id": ValueType.INT64}
    assert plan.request_fields == {"amount": ValueType.DOUBLE}
    # Feast keeps every view of one entity in one hash: one read per entity.
    by_keys = {e.join_keys: [v.view.name for v in e.views] for e in plan.entities}
    assert by_keys == {
        ("card_id",): ["card_transaction_features", "card_profile"],
        ("merchant_id",): ["merchant_transaction_features"],
    }
    assert [(r.odfv.name, r.features, r.request_fields) for r in plan.on_demand] == [
        ("transaction_amount_ratio", ("amount_to_card_mean_24h",), ("amount",))
    ]


def test_an_on_demand_features_inputs_are_read_but_not_output(catalog) -> None:
    plan = catalog.plan_for_features([RATIO])
    assert plan.outputs == (("transaction_amount_ratio", "amount_to_card_mean_24h"),)
    (entity,) = plan.entities
    (read,) = entity.views
    assert read.view.name == "card_transaction_features"
    assert "card_amount_mean_24h" in read.features
    assert read.output == (False,) * len(read.features)
    assert plan.join_keys == ("card_id",) and plan.request_fields == {"amount": ValueType.DOUBLE}
    # Asked for as well, the input is an output too, once.
    both = catalog.plan_for_features(["card_transaction_features:card_amount_mean_24h", RATIO])
    (read,) = both.entities[0].views
    flags = dict(zip(read.features, read.output))
    assert flags["card_amount_mean_24h"] is True
    assert sum(flags.values()) == 1


def test_a_view_read_carries_the_views_ttl_and_its_fields_in_order(catalog) -> None:
    plan = catalog.plan_for_features(["card_profile:card_tier", "card_profile:credit_limit"])
    (read,) = plan.entities[0].views
    assert read.features == ("card_tier", "credit_limit")
    assert read.value_types == (ValueType.STRING, ValueType.DOUBLE)
    assert read.ttl == read.view.ttl and read.ttl.days == 2
    layout = plan.entities[0].layout
    assert read.fields == tuple(layout.feature_fields[f] for f in read.features)


@pytest.fixture(scope="module")
def card_read(store):
    """The service plan's read of the card entity. Planned once: the plan does not depend on the
    id, and planning it for each example was most of the property's time."""
    plan = Catalog(store).plan_for_service(SERVICE)
    return next(e for e in plan.entities if e.join_keys == ("card_id",))


@settings(max_examples=50, deadline=None)
@given(card_id=st.integers(-(2**63), 2**63 - 1))
@example(card_id=-(2**63))
@example(card_id=2**63 - 1)
def test_the_prebuilt_hmget_is_the_command_for_feasts_own_key(
    store, card_read, card_id: int
) -> None:
    fields = [f for r in card_read.views for f in r.fields] + [r.ts_field for r in card_read.views]
    key = _redis_key(
        store.config.project,
        EntityKey(join_keys=["card_id"], entity_values=[Value(int64_val=card_id)]),
        entity_key_serialization_version=store.config.entity_key_serialization_version,
    )
    expected = resp.pack(b"HMGET", key, *fields)
    assert card_read.command_head + resp.bulk(key) + card_read.command_tail == expected
    assert card_read.around_int64_id is not None
    before, after = card_read.around_int64_id
    assert before + card_id.to_bytes(8, "little", signed=True) + after == expected


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ([], "no features requested"),
        (["nope:x"], "unknown feature view 'nope'; the registry has: "),
        (["card_profile:nope"], "nope"),
        (["card_profile:card_tier", "card_profile:card_tier"],
         r"features requested more than once: \['card_profile:card_tier'\]"),
    ],
)
def test_bad_references_are_named(catalog, refs: list[str], message: str) -> None:
    with pytest.raises(UnknownNameError, match=message):
        catalog.plan_for_features(refs)


def test_an_unknown_service_names_the_registrys(catalog) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown feature service 'v2'.*'fraud_detection_v1'"):
        catalog.plan_for_service("v2")


def test_a_request_holds_at_most_max_features_a_service_any_number(catalog) -> None:
    profile = [f"card_profile:{f}" for f in
               ("credit_limit", "card_age_days", "home_country", "card_tier")]
    assert len(catalog.plan_for_features(profile).outputs) == 4
    with pytest.raises(TooManyFeaturesError, match="5 features in one request; the limit is 4"):
        catalog.plan_for_features([*profile, RATIO])
    assert len(catalog.plan_for_service(SERVICE).outputs) > 4


def test_plans_are_cached_by_their_references_and_the_cache_is_bounded(store) -> None:
    catalog = Catalog(store)
    refs = ["card_profile:credit_limit", "card_profile:card_tier"]
    first = catalog.plan_for_features(refs)
    assert catalog.plan_for_features(list(refs)) is first
    assert catalog.plan_for_features(refs[::-1]) is not first  # another order, another plan
    features = [f"card_transaction_features:{a.name}"
                for a in catalog.views["card_transaction_features"].aggregations]
    others = [list(c) for n in range(1, len(features) + 1) for c in combinations(features, n)]
    assert len(others) >= _PLAN_CACHE_SIZE
    for other in others[:_PLAN_CACHE_SIZE]:
        catalog.plan_for_features(other)
    # `first` was the least recently used: evicted, so planned anew.
    again = catalog.plan_for_features(refs)
    assert again is not first and again.outputs == first.outputs
