"""What an export joins: the feature views and features its references name, resolved from the
registry; unknown names and colliding output columns are errors before anything is read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feast import FeatureStore
from feast.errors import FeatureServiceNotFoundException
from feast.on_demand_feature_view import OnDemandFeatureView

from featurestore.definitions import (
    Feature,
    ViewDefinition,
    check_plain_projection,
    load_views,
    on_demand_feature,
    parse_reference,
    service_references,
    view_feature,
)
from featurestore.errors import (
    DefinitionError,
    FeatureStoreError,
    UnknownFeatureViewError,
    UnknownNameError,
)


@dataclass(frozen=True)
class ViewRequest:
    """A feature view to join: the features the export shows or an on-demand view reads."""

    view: ViewDefinition
    features: tuple[Feature, ...]

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.view.join_keys]


@dataclass(frozen=True)
class OnDemandRequest:
    view: OnDemandFeatureView
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class ExportPlan:
    """What an export reads and writes, resolved from the registry."""

    feature_service: str | None
    references: tuple[str, ...]
    views: tuple[ViewRequest, ...]
    on_demand: tuple[OnDemandRequest, ...]
    # (view name, feature) of each output column, in output order; the column is the feature.
    outputs: tuple[tuple[str, Feature], ...]
    join_keys: tuple[Feature, ...]

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for _, feature in self.outputs]


def plan_export(
    store: FeatureStore,
    *,
    feature_service: str | None = None,
    features: Iterable[str] | None = None,
) -> ExportPlan:
    """Resolve a feature service or `view:feature` references; unknown names are errors."""
    wanted = list(features or [])
    if (feature_service is None) == (not wanted):
        raise FeatureStoreError(
            "give either a feature service or feature references (view:feature), exactly one"
        )
    if feature_service is not None:
        wanted = _service_references(store, feature_service)
    views = load_views(store)
    on_demand_views = {v.name: v for v in store.list_on_demand_feature_views()}
    return build_plan(wanted, views, on_demand_views, feature_service=feature_service)


def build_plan(
    references: Sequence[str],
    views: Mapping[str, ViewDefinition],
    on_demand_views: Mapping[str, OnDemandFeatureView],
    *,
    feature_service: str | None = None,
) -> ExportPlan:
    """The plan of `references` over the registry's views: the features each view must give
    (those shown and those on-demand views read), the outputs in reference order, the join keys
    of all views once each."""
    needed: dict[str, dict[str, Feature]] = {}
    on_demand: dict[str, dict[str, Feature]] = {}
    outputs: list[tuple[str, Feature]] = []
    for reference in references:
        view_name, feature_name = parse_reference(reference)
        if view_name in views:
            feature = view_feature(views[view_name], feature_name)
            needed.setdefault(view_name, {})[feature.name] = feature
        elif view_name in on_demand_views:
            odfv = on_demand_views[view_name]
            feature = on_demand_feature(odfv, feature_name)
            on_demand.setdefault(view_name, {})[feature.name] = feature
            _add_sources(needed, odfv, views)
        else:
            known = sorted([*views, *on_demand_views])
            raise UnknownFeatureViewError(
                f"feature reference {reference!r}: unknown feature view {view_name!r}; "
                f"the registry has: {known or 'none'}"
            )
        outputs.append((view_name, feature))
    _check_collisions(outputs, references)

    view_requests = tuple(
        ViewRequest(views[name], tuple(wanted.values())) for name, wanted in needed.items()
    )
    join_keys: dict[str, Feature] = {}
    for request in view_requests:
        for key in request.view.join_keys:
            join_keys.setdefault(key.name, key)
    return ExportPlan(
        feature_service=feature_service,
        references=tuple(references),
        views=view_requests,
        on_demand=tuple(
            OnDemandRequest(on_demand_views[name], tuple(wanted.values()))
            for name, wanted in on_demand.items()
        ),
        outputs=tuple(outputs),
        join_keys=tuple(join_keys.values()),
    )


def _service_references(store: FeatureStore, name: str) -> list[str]:
    try:
        service = store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise UnknownNameError(
            f"unknown feature service {name!r}; the registry has: {known or 'none'}"
        ) from None
    return service_references(service)


def _add_sources(
    needed: dict[str, dict[str, Feature]],
    view: OnDemandFeatureView,
    views: Mapping[str, ViewDefinition],
) -> None:
    """Add the features an on-demand view reads to those its source views must give."""
    for source in _on_demand_sources(view, views):
        for dependency in source.features:
            needed.setdefault(source.name, {})[dependency.name] = Feature(
                dependency.name, dependency.dtype
            )


def _on_demand_sources(view: OnDemandFeatureView, views: Mapping[str, ViewDefinition]) -> list[Any]:
    sources = list(view.source_feature_view_projections.values())
    for source in sources:
        check_plain_projection(source, f"on-demand feature view {view.name!r}")
        if source.name not in views:
            raise DefinitionError(
                f"on-demand feature view {view.name!r} reads {source.name!r}, which is not a "
                "feature view with an offline table"
            )
    return sources


def _check_collisions(outputs: list[tuple[str, Feature]], references: Sequence[str]) -> None:
    seen: dict[str, list[str]] = {}
    for reference, (_, feature) in zip(references, outputs):
        seen.setdefault(feature.name, []).append(reference)
    collided = [refs for refs in seen.values() if len(refs) > 1]
    if collided:
        raise FeatureStoreError(
            f"feature references {collided[0]} give the same column name "
            f"{collided[0][0].partition(':')[2]!r}; request each feature name once"
        )
