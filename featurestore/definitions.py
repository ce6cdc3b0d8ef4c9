"""Feature definitions as every engine sees them: read from the Feast registry, never restated."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import (
    FeatureService,
    FeatureStore,
    FeatureView,
    FileSource,
    KafkaSource,
    OnDemandFeatureView,
)
from feast.data_format import JsonFormat
from feast.stream_feature_view import StreamFeatureView
from feast.types import FeastType

from featurestore.aggregations import WindowedAggregation, resolve_all
from featurestore.errors import (
    DefinitionError,
    FeatureStoreError,
    UnknownFeatureViewError,
    UnknownNameError,
)


@dataclass(frozen=True)
class Table:
    """A Parquet dataset declared as a Feast FileSource (Hive `event_date=` partitions)."""

    name: str
    path: Path
    timestamp_field: str
    created_timestamp_column: str | None


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: FeastType


@dataclass(frozen=True)
class ViewDefinition:
    """A feature view: its entity columns, features, offline table and (optionally) how it is computed."""

    name: str
    join_keys: tuple[Feature, ...]
    features: tuple[Feature, ...]
    ttl: timedelta
    offline: Table
    feast_view: FeatureView
    # Only for views computed from raw events (stream feature views with aggregations).
    aggregations: tuple[WindowedAggregation, ...] = ()
    raw: Table | None = None
    raw_schema: str | None = None
    # The Kafka topic of the raw events, the event field messages are keyed by, how late an event may arrive (the source's
    # watermark_delay_threshold), and inclusive bounds of numeric event fields (the source's
    # `valid_range.<field>` tags, "low..high").
    topic: str | None = None
    message_key: str | None = None
    lateness: timedelta = timedelta(0)
    event_ranges: tuple[tuple[str, float, float], ...] = ()
    # Event-time sanity (tags `max_future_skew`, e.g. "5m", and `timestamp_range`, years
    # "2000..2100"): how far ahead of processing time an event may be, and its plausible years.
    max_future_skew: timedelta = timedelta(minutes=5)
    timestamp_range: tuple[int, int] = (2000, 2100)

    @property
    def is_aggregated(self) -> bool:
        return bool(self.aggregations)

    @property
    def raw_events(self) -> Table:
        """The raw event table an aggregated view is computed from."""
        if self.raw is None:
            raise DefinitionError(f"feature view {self.name!r} is not computed from raw events")
        return self.raw

    @property
    def max_window(self) -> timedelta:
        return max(a.window for a in self.aggregations)


def file_table(source: FileSource) -> Table:
    """The Parquet dataset a FileSource declares (callers check the kind, in their own terms)."""
    return Table(
        name=source.name,
        path=Path(source.path),
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
    )


def _table(source: object, owner: str) -> Table:
    if not isinstance(source, FileSource):
        raise DefinitionError(
            f"{owner}: offline source {getattr(source, 'name', source)!r} must be a FileSource "
            f"(Parquet), got {type(source).__name__}"
        )
    return file_table(source)


def _ttl(view: FeatureView) -> timedelta:
    # Feast types ttl Optional; its registry reads "no ttl" back as 0, which means forever.
    return view.ttl if view.ttl is not None else timedelta(0)


def _definition(store: FeatureStore, view: FeatureView) -> ViewDefinition:
    entity_columns = {c.name: c for c in view.entity_columns}
    join_keys = tuple(Feature(name, entity_columns[name].dtype) for name in view.join_keys)
    # Feast's own feature list, join keys included when the schema declares them: Feast's writer
    # stores those as fields too, and the online layout must match it byte for byte.
    features = tuple(Feature(f.name, f.dtype) for f in view.features)
    offline = _table(view.batch_source, f"feature view {view.name!r}")
    if not isinstance(view, StreamFeatureView) or not view.aggregations:
        return ViewDefinition(view.name, join_keys, features, _ttl(view), offline, view)

    stream = view.stream_source
    if not isinstance(stream, KafkaSource):
        raise DefinitionError(f"feature view {view.name!r}: aggregations need a KafkaSource")
    raw_name = stream.tags.get("raw_source")
    if not raw_name:
        raise DefinitionError(
            f"feature view {view.name!r}: its KafkaSource {stream.name!r} needs a "
            "tags={'raw_source': <FileSource name>} naming the raw event archive"
        )
    message_format = stream.kafka_options.message_format
    if not isinstance(message_format, JsonFormat):
        raise DefinitionError(
            f"feature view {view.name!r}: its KafkaSource {stream.name!r} needs "
            "message_format=JsonFormat(schema_json=<the events' DDL>): the stream reads JSON"
        )
    raw = _table(store.get_data_source(raw_name), f"raw source of {view.name!r}")
    aggregations = tuple(resolve_all(view.aggregations, view.name))
    declared = {f.name for f in features}
    missing = [a.name for a in aggregations if a.name not in declared]
    if missing:
        raise DefinitionError(
            f"feature view {view.name!r}: aggregations {missing} are not in its schema"
        )
    return ViewDefinition(
        view.name,
        join_keys,
        features,
        _ttl(view),
        offline,
        view,
        aggregations=aggregations,
        raw=raw,
        raw_schema=message_format.schema_json,
        topic=stream.kafka_options.topic,
        message_key=stream.tags.get("message_key"),
        lateness=stream.kafka_options.watermark_delay_threshold or timedelta(0),
        event_ranges=_event_ranges(stream),
        max_future_skew=_max_future_skew(stream),
        timestamp_range=_timestamp_range(stream),
    )


_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1),
          "d": timedelta(days=1)}


def _max_future_skew(stream: KafkaSource) -> timedelta:
    text = stream.tags.get("max_future_skew")
    if text is None:
        return ViewDefinition.max_future_skew
    number, unit = text.strip()[:-1], text.strip()[-1:]
    if not number.isdigit() or unit not in _UNITS:
        raise DefinitionError(
            f"KafkaSource {stream.name!r}: tag max_future_skew={text!r} must read "
            "'<whole number><s|m|h|d>', e.g. '5m'"
        )
    return int(number) * _UNITS[unit]


def _timestamp_range(stream: KafkaSource) -> tuple[int, int]:
    text = stream.tags.get("timestamp_range")
    if text is None:
        return ViewDefinition.timestamp_range
    first, sep, last = text.partition("..")
    if not (sep and first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) <= 9999):
        raise DefinitionError(
            f"KafkaSource {stream.name!r}: tag timestamp_range={text!r} must read "
            "'<first year>..<last year>' within 1..9999, e.g. '2000..2100'"
        )
    return int(first), int(last)


def _event_ranges(stream: KafkaSource) -> tuple[tuple[str, float, float], ...]:
    ranges = []
    for tag, text in sorted(stream.tags.items()):
        if not tag.startswith("valid_range."):
            continue
        low, sep, high = text.partition("..")
        try:
            bounds: tuple[float, float] | None = (float(low), float(high))
        except ValueError:
            bounds = None
        if not sep or bounds is None or not bounds[0] <= bounds[1]:
            raise DefinitionError(
                f"KafkaSource {stream.name!r}: tag {tag}={text!r} must read 'low..high'"
            )
        ranges.append((tag.removeprefix("valid_range."), *bounds))
    return tuple(ranges)


def load_views(store: FeatureStore) -> dict[str, ViewDefinition]:
    """Every online-capable feature view in the registry, by name."""
    views: list[FeatureView] = [
        *store.list_stream_feature_views(),
        *(v for v in store.list_feature_views() if not isinstance(v, StreamFeatureView)),
    ]
    return {v.name: _definition(store, v) for v in sorted(views, key=lambda v: v.name)}


def select_views(
    store: FeatureStore, names: list[str] | None, *, aggregated_only: bool = False
) -> list[ViewDefinition]:
    """The named views (all when `names` is empty); an unknown name is an error naming it."""
    views = load_views(store)
    if aggregated_only:
        views = {n: v for n, v in views.items() if v.is_aggregated}
    if not names:
        if not views:
            raise UnknownFeatureViewError(
                "the registry has no feature views; run `featurestore apply` first"
            )
        return list(views.values())
    unknown = [n for n in names if n not in views]
    if unknown:
        kind = "aggregated feature view" if aggregated_only else "feature view"
        raise UnknownFeatureViewError(
            f"unknown {kind}(s) {unknown}; the registry has: {sorted(views) or 'none'}"
        )
    return [views[n] for n in names]


# Feature references, `view:feature` as Feast writes them: shared by the lookup and the export.


def service_references(service: FeatureService) -> list[str]:
    """The `view:feature` references a feature service selects, in its order."""
    references = []
    for projection in service.feature_view_projections:
        check_plain_projection(projection, f"feature service {service.name!r}")
        references += [f"{projection.name}:{f.name}" for f in projection.features]
    return references


def check_plain_projection(projection: Any, owner: str) -> None:
    # Aliased views and renamed join keys change output and key names; nothing here uses them.
    if projection.name_alias or projection.join_key_map:
        raise DefinitionError(
            f"{owner}: projection of {projection.name!r} renames the view or its join keys, "
            "which featurestore does not support"
        )


def parse_reference(reference: str) -> tuple[str, str]:
    view, sep, feature = reference.partition(":")
    if not sep or not view or not feature or ":" in feature:
        raise FeatureStoreError(
            f"feature reference {reference!r} must look like 'view:feature', "
            "e.g. card_profile:credit_limit"
        )
    return view, feature


def view_feature(view: ViewDefinition, name: str) -> Feature:
    keys = {k.name for k in view.join_keys}
    features = {f.name: f for f in view.features if f.name not in keys}
    if name not in features:
        raise UnknownNameError(
            f"feature view {view.name!r} has no feature {name!r}; it has: {sorted(features)}"
        )
    return features[name]


def on_demand_feature(view: OnDemandFeatureView, name: str) -> Feature:
    features = {f.name: Feature(f.name, f.dtype) for f in view.features}
    if name not in features:
        raise UnknownNameError(
            f"on-demand feature view {view.name!r} has no feature {name!r}; "
            f"it has: {sorted(features)}"
        )
    return features[name]
