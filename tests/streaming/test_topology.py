"""Topologies built from the example registry's stream views (SQLite, no server), and the
inconsistencies between views that `build` refuses by name."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from featurestore.errors import DefinitionError
from streaming.topology import build, repartition_topic

CARD, MERCHANT = "card_transaction_features", "merchant_transaction_features"


@pytest.fixture(scope="module")
def views(example_store) -> dict:
    from featurestore.definitions import select_views

    selected = select_views(example_store, None, aggregated_only=True)
    return {view.name: view for view in selected}


def test_a_view_keyed_by_another_field_is_computed_behind_a_repartition_topic(views) -> None:
    (topology,) = build([views[CARD], views[MERCHANT]], "g")
    card = views[CARD]
    source_topic = card.topic
    by_merchant = repartition_topic("g", source_topic, "merchant_id")
    assert by_merchant == f"g-{source_topic}-by-merchant_id"
    assert topology.source_topic == source_topic
    assert topology.topics == [source_topic, by_merchant]
    source, forwarded = topology.stages[source_topic], topology.stages[by_merchant]
    assert (source.key, source.is_source, [v.name for v in source.views]) == (
        "card_id", True, [CARD])
    assert source.forwards == (forwarded,)
    assert (forwarded.key, forwarded.is_source, [v.name for v in forwarded.views]) == (
        "merchant_id", False, [MERCHANT])
    assert forwarded.forwards == ()
    # What the source declares, taken over as it is.
    assert topology.raw == card.raw
    assert topology.timestamp_field == card.raw.timestamp_field
    assert topology.lateness == card.lateness
    assert topology.ranges == {name: (low, high) for name, low, high in card.event_ranges}
    assert topology.schema.get_field_index("merchant_id") >= 0


def test_views_of_the_message_key_alone_need_no_repartition_topic(views) -> None:
    (topology,) = build([views[CARD]], "g")
    assert topology.topics == [views[CARD].topic]
    assert topology.stages[views[CARD].topic].forwards == ()


def test_each_source_topic_gets_a_topology_ordered_by_topic(views) -> None:
    merchants = dataclasses.replace(views[MERCHANT], topic="a-merchant-events",
                                    message_key="merchant_id")
    first, second = build([views[CARD], merchants], "g")
    assert first.source_topic == "a-merchant-events" and second.source_topic == views[CARD].topic
    assert first.topics == ["a-merchant-events"] and second.topics == [views[CARD].topic]


def test_no_stream_views_is_an_error() -> None:
    with pytest.raises(DefinitionError, match="no stream feature views with aggregations"):
        build([], "g")


@pytest.mark.parametrize("missing", ["topic", "message_key", "raw", "raw_schema"])
def test_a_view_without_its_sources_parts_is_named(views, missing: str) -> None:
    broken = dataclasses.replace(views[CARD], **{missing: None})
    with pytest.raises(DefinitionError, match=f"stream feature view '{CARD}': its KafkaSource"):
        build([broken, views[MERCHANT]], "g")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("lateness", timedelta(minutes=17)),
        ("message_key", "merchant_id"),
        ("event_ranges", (("amount", 0.0, 1.0),)),
        ("max_future_skew", timedelta(hours=1)),
        ("timestamp_range", (1990, 2100)),
    ],
)
def test_views_of_one_topic_must_agree_on_its_events(views, attribute: str, value) -> None:
    other = dataclasses.replace(views[MERCHANT], **{attribute: value})
    with pytest.raises(DefinitionError, match=f"declare different {attribute}"):
        build([views[CARD], other], "g")


def test_a_join_key_must_be_an_event_field(views) -> None:
    key = dataclasses.replace(views[MERCHANT].join_keys[0], name="shop_id")
    other = dataclasses.replace(views[MERCHANT], join_keys=(key,))
    with pytest.raises(DefinitionError, match="join key 'shop_id' is not an event field"):
        build([views[CARD], other], "g")


def test_a_stream_view_needs_exactly_one_join_key(views) -> None:
    card = views[CARD]
    two = dataclasses.replace(card, join_keys=(*card.join_keys, views[MERCHANT].join_keys[0]))
    with pytest.raises(DefinitionError, match=f"stream feature views \\['{CARD}'\\] need exactly"):
        build([two], "g")


def test_a_source_topic_may_not_be_another_topologys_repartition_topic(views) -> None:
    clash = repartition_topic("g", views[CARD].topic, "merchant_id")
    merchants = dataclasses.replace(views[MERCHANT], topic=clash, message_key="merchant_id")
    with pytest.raises(DefinitionError, match="both a source and a repartition topic"):
        build([views[CARD], views[MERCHANT], merchants], "g")
