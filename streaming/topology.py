"""What a stream worker consumes and computes, derived from the registry's stream feature views.

Each source topic gets a topology of its own; one worker group consumes all of them. Raw events
arrive on a source topic keyed by the source's `message_key` (the card). A view keyed by
that field is computed straight from the topic. A view keyed by another field (the merchant)
needs all of an entity's events in one place, so the source stage forwards each accepted event
to an internal repartition topic partitioned by that field (as Kafka Streams does; in Arrow
batches, `streaming.repartition`), and a second stage computes the view from there. Both stages are partitions of one consumer group, so adding
workers spreads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa

from featurestore.definitions import Table, ViewDefinition
from featurestore.errors import DefinitionError
from featurestore.offline import schema_from_ddl


@dataclass(frozen=True)
class Stage:
    """One consumed topic, keyed by `key`, and the views computed from it."""

    topic: str
    key: str
    views: tuple[ViewDefinition, ...]
    # The source stage validates and archives raw events and forwards them to these stages.
    forwards: tuple[Stage, ...] = ()
    is_source: bool = False


@dataclass(frozen=True)
class Topology:
    source_topic: str
    schema: pa.Schema
    raw: Table
    timestamp_field: str
    lateness: timedelta
    ranges: dict[str, tuple[float, float]]
    stages: dict[str, Stage]
    max_future_skew: timedelta = timedelta(minutes=5)
    timestamp_range: tuple[int, int] = (2000, 2100)

    @property
    def topics(self) -> list[str]:
        return list(self.stages)


def repartition_topic(group: str, source_topic: str, key: str) -> str:
    return f"{group}-{source_topic}-by-{key}"


def build(views: list[ViewDefinition], group: str) -> list[Topology]:
    """One topology per source topic of the aggregated `views`, ordered by topic.

    Views reading one topic must agree on how its events look; inconsistencies are errors.
    """
    if not views:
        raise DefinitionError("the registry has no stream feature views with aggregations")
    by_topic: dict[str, list[ViewDefinition]] = {}
    for view in views:
        by_topic.setdefault(_source(view).topic, []).append(view)
    built = [_build_one(by_topic[topic], group) for topic in sorted(by_topic)]
    consumed = [topic for topology in built for topic in topology.topics]
    clashes = sorted({t for t in consumed if consumed.count(t) > 1})
    if clashes:
        raise DefinitionError(f"stream topics {clashes} are both a source and a repartition topic")
    return built


@dataclass(frozen=True)
class _Source:
    """What a stream feature view declares of its KafkaSource, all of it present."""

    topic: str
    message_key: str
    raw: Table
    raw_schema: str


def _source(view: ViewDefinition) -> _Source:
    if not view.topic or not view.message_key or view.raw is None or not view.raw_schema:
        raise DefinitionError(
            f"stream feature view {view.name!r}: its KafkaSource needs a topic, a "
            "message_key tag and a raw_source tag"
        )
    return _Source(view.topic, view.message_key, view.raw, view.raw_schema)


def _build_one(views: list[ViewDefinition], group: str) -> Topology:
    """The topology of the views that read one source topic."""
    first = views[0]
    for view in views[1:]:
        for attribute in ("raw_schema", "raw", "message_key", "lateness", "event_ranges",
                          "max_future_skew", "timestamp_range"):
            if getattr(view, attribute) != getattr(first, attribute):
                raise DefinitionError(
                    f"stream feature views {first.name!r} and {view.name!r} read one topic but "
                    f"declare different {attribute}: {getattr(first, attribute)!r} vs "
                    f"{getattr(view, attribute)!r}"
                )
    source = _source(first)
    schema = schema_from_ddl(source.raw_schema)
    for view in views:
        for key in view.join_keys:
            if schema.get_field_index(key.name) < 0:
                raise DefinitionError(
                    f"feature view {view.name!r}: join key {key.name!r} is not an event field"
                )
    several = [v.name for v in views if len(v.join_keys) != 1]
    if several:
        raise DefinitionError(f"stream feature views {several} need exactly one join key each")

    by_key: dict[str, list[ViewDefinition]] = {}
    for view in views:
        by_key.setdefault(view.join_keys[0].name, []).append(view)
    forwards = tuple(
        Stage(repartition_topic(group, source.topic, key), key, tuple(group_views))
        for key, group_views in sorted(by_key.items())
        if key != source.message_key
    )
    source_stage = Stage(
        source.topic,
        source.message_key,
        tuple(by_key.get(source.message_key, ())),
        forwards=forwards,
        is_source=True,
    )
    return Topology(
        source_topic=source.topic,
        schema=schema,
        raw=source.raw,
        timestamp_field=source.raw.timestamp_field,
        lateness=first.lateness,
        ranges={name: (low, high) for name, low, high in first.event_ranges},
        stages={stage.topic: stage for stage in (source_stage, *forwards)},
        max_future_skew=first.max_future_skew,
        timestamp_range=first.timestamp_range,
    )
