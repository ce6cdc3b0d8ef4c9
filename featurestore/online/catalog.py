"""What a lookup reads and computes, resolved once from the registry and reused for every request.

A `ReadPlan` says, for a feature service or a list of `view:feature` references: which Redis hash
fields of which views to read (grouped by entity, since Feast keeps every view of one entity in
one hash), which on-demand views to compute from them, which entity keys and request fields the
caller must send, and the order of the output columns. Plans are built from a `Catalog`, a
snapshot of the registry that the server swaps when the registry changes.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from feast import FeatureService, FeatureStore, OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.value_type import ValueType

from featurestore.definitions import (
    ViewDefinition,
    load_views,
    on_demand_feature,
    parse_reference,
    view_feature,
)
from featurestore.errors import TooManyFeaturesError, UnknownNameError
from featurestore.online.feast_layout import RedisLayout
from featurestore.online.resp import bulk

_PLAN_CACHE_SIZE = 256


@dataclass(frozen=True)
class ViewRead:
    """The features of one view a plan reads (`output` False: only an on-demand input)."""

    view: ViewDefinition
    features: tuple[str, ...]
    value_types: tuple[ValueType, ...]
    fields: tuple[bytes, ...]
    ts_field: bytes
    ttl: timedelta
    output: tuple[bool, ...]


@dataclass(frozen=True)
class EntityRead:
    """One HMGET per entity: every requested field of the views keyed by these join keys."""

    join_keys: tuple[str, ...]
    key_types: tuple[ValueType, ...]
    layout: RedisLayout
    views: tuple[ViewRead, ...]
    # The constant part of the command: header before the key, field arguments after it; for a
    # single INT64 join key, everything around the 8 id bytes.
    command_head: bytes
    command_tail: bytes
    around_int64_id: tuple[bytes, bytes] | None


@dataclass(frozen=True)
class OnDemandRead:
    odfv: OnDemandFeatureView
    features: tuple[str, ...]
    request_fields: tuple[str, ...]


@dataclass(frozen=True)
class ReadPlan:
    entities: tuple[EntityRead, ...]
    on_demand: tuple[OnDemandRead, ...]
    # What the caller sends: each join key and request field, with its type.
    key_types: dict[str, ValueType]
    request_fields: dict[str, ValueType]
    # Output columns in order: (view or on-demand view name, feature name).
    outputs: tuple[tuple[str, str], ...]

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(self.key_types)

    @property
    def feature_refs(self) -> list[str]:
        return [f"{view}:{feature}" for view, feature in self.outputs]


def _hmget(fields: list[bytes]) -> tuple[bytes, bytes]:
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    tail = b"".join(bulk(f) for f in fields)
    return head, tail


class Catalog:
    """Feature views, on-demand views and services of one registry snapshot. A request's own
    feature list holds at most `max_features` references (a service's are the registry's)."""

    def __init__(self, store: FeatureStore, max_features: int | None = None) -> None:
        project = store.project
        self.max_features = max_features
        self.config: RepoConfig = store.config
        self.views: dict[str, ViewDefinition] = load_views(store)
        self.on_demand: dict[str, OnDemandFeatureView] = {
            v.name: v for v in store.list_on_demand_feature_views()
        }
        self.services: dict[str, FeatureService] = {
            s.name: s for s in store.registry.list_feature_services(project)
        }
        self._plans: OrderedDict[tuple[str, ...], ReadPlan] = OrderedDict()

    def plan_for_service(self, name: str) -> ReadPlan:
        service = self.services.get(name)
        if service is None:
            raise UnknownNameError(
                f"unknown feature service {name!r}; the registry has: "
                f"{sorted(self.services) or 'none'}"
            )
        refs = [
            f"{projection.name}:{feature.name}"
            for projection in service.feature_view_projections
            for feature in projection.features
        ]
        return self._cached_plan(refs)

    def plan_for_features(self, refs: list[str]) -> ReadPlan:
        if self.max_features is not None and len(refs) > self.max_features:
            raise TooManyFeaturesError(
                f"{len(refs)} features in one request; the limit is {self.max_features} "
                "(serve_max_features; a feature service has none)"
            )
        return self._cached_plan(refs)

    def _cached_plan(self, refs: list[str]) -> ReadPlan:
        key = tuple(refs)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(refs)
            self._plans[key] = plan
            if len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def _parse(self, ref: str) -> tuple[str, str]:
        view, feature = parse_reference(ref)
        if view in self.views:
            view_feature(self.views[view], feature)
        elif view in self.on_demand:
            on_demand_feature(self.on_demand[view], feature)
        else:
            known = sorted([*self.views, *self.on_demand])
            raise UnknownNameError(
                f"feature reference {ref!r}: unknown feature view {view!r}; the registry has: "
                f"{known or 'none'}"
            )
        return view, feature

    def _plan(self, refs: list[str]) -> ReadPlan:
        if not refs:
            raise UnknownNameError("no features requested")
        outputs = [self._parse(ref) for ref in refs]
        duplicates = sorted(r for r, count in Counter(refs).items() if count > 1)
        if duplicates:
            raise UnknownNameError(f"features requested more than once: {duplicates}")
        wanted: dict[str, dict[str, bool]] = {}  # view -> feature -> is an output
        on_demand: dict[str, list[str]] = {}
        for view, feature in outputs:
            if view in self.on_demand:
                on_demand.setdefault(view, []).append(feature)
            else:
                wanted.setdefault(view, {})[feature] = True
        request_fields: dict[str, ValueType] = {}
        reads = []
        for name, features in on_demand.items():
            odfv = self.on_demand[name]
            for projection in odfv.source_feature_view_projections.values():
                for field in projection.features:
                    wanted.setdefault(projection.name, {}).setdefault(field.name, False)
            fields = odfv.get_request_data_schema()
            request_fields.update(fields)
            reads.append(OnDemandRead(odfv, tuple(features), tuple(fields)))
        entities = self._entity_reads(wanted)
        return ReadPlan(
            entities=entities,
            on_demand=tuple(reads),
            key_types={k: t for r in entities for k, t in zip(r.join_keys, r.key_types)},
            request_fields=request_fields,
            outputs=tuple(outputs),
        )

    def _entity_reads(self, wanted: dict[str, dict[str, bool]]) -> tuple[EntityRead, ...]:
        groups: dict[tuple[str, ...], list[ViewDefinition]] = {}
        for name in wanted:
            view = self.views[name]
            groups.setdefault(tuple(k.name for k in view.join_keys), []).append(view)
        reads = []
        for join_keys, views in groups.items():
            layout = RedisLayout(views[0], self.config)
            view_reads = []
            for view in views:
                view_layout = RedisLayout(view, self.config)
                features = tuple(wanted[view.name])
                view_reads.append(ViewRead(
                    view=view,
                    features=features,
                    value_types=tuple(view_layout.value_types[f] for f in features),
                    fields=tuple(view_layout.feature_fields[f] for f in features),
                    ts_field=view_layout.ts_field,
                    ttl=view.ttl,
                    output=tuple(wanted[view.name].values()),
                ))
            fields = [f for r in view_reads for f in r.fields] + [r.ts_field for r in view_reads]
            head, tail = _hmget(fields)
            around = None
            if layout.int64_key_template is not None:
                prefix, suffix = layout.int64_key_template
                key_length = len(prefix) + 8 + len(suffix)
                around = (head + b"$%d\r\n" % key_length + prefix, suffix + b"\r\n" + tail)
            reads.append(EntityRead(
                join_keys, tuple(layout.key_types), layout, tuple(view_reads), head, tail, around
            ))
        return tuple(reads)
