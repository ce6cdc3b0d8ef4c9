"""Online feature lookups: entity keys in, values + statuses + event times out (Feast's response shape).

The Redis fast path sends one pipelined round trip (one HMGET per entity and entity type, every
requested view's fields at once) and decodes the replies column by column. Other online stores go
through Feast's own reader. Both check the request against the same `ReadPlan`, so errors read
the same whatever the store.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from feast import FeatureStore, OnDemandFeatureView
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType

from featurestore.errors import EntityKeyError, TooManyEntitiesError
from featurestore.online.catalog import OnDemandRead, ReadPlan
from featurestore.online.event_times import EventTimes
from featurestore.online.event_times import iso as _iso
from featurestore.online.redis_pool import ReadPool
from featurestore.online.resp import bulk
from featurestore.online.values import decode_column

_INT64_ID = struct.Struct("<q").pack
PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = (
    "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE",
)
# The compact answer's status codes: Feast's own `FieldStatus` enum numbers (PRESENT = 1, ...),
# so a caller holding Feast's protos reads them without a table of ours.
# This process's event times, remembered across lookups (the event loop is its only reader).
EVENT_TIMES = EventTimes()
STATUS_CODES = {name: FieldStatus.Value(name)
                for name in (PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE)}


@dataclass
class LookupResult:
    """Per output column (join keys first): values, statuses and event times, one per entity."""

    feature_names: list[str]
    values: list[list[object]]
    statuses: list[list[str]]
    event_timestamps: list[list[str | None]]

    def to_response(self) -> dict[str, object]:
        """Feast's `get-online-features` JSON shape."""
        return {
            "metadata": {"feature_names": self.feature_names},
            "results": [
                {"values": v, "statuses": s, "event_timestamps": t}
                for v, s, t in zip(self.values, self.statuses, self.event_timestamps)
            ],
        }

    def to_compact(self) -> dict[str, object]:
        """The compact answer for batch callers: names once, then aligned column arrays, each
        status a `FieldStatus` number (`status_codes` spells them out)."""
        coded: dict[int, list[int]] = {}  # features of one view share one list of statuses
        for column in self.statuses:
            if id(column) not in coded:
                coded[id(column)] = [STATUS_CODES[s] for s in column]
        return {
            "feature_names": self.feature_names,
            "status_codes": {str(code): name for name, code in STATUS_CODES.items()},
            "values": self.values,
            "statuses": [coded[id(column)] for column in self.statuses],
            "event_timestamps": self.event_timestamps,
        }

    def column(self, name: str) -> list[object]:
        return self.values[self.feature_names.index(name)]


_EXPECTED = {
    ValueType.INT64: ("64-bit integers", (int,), 1 << 63),
    ValueType.INT32: ("32-bit integers", (int,), 1 << 31),
    ValueType.DOUBLE: ("finite numbers", (int, float), None),
    ValueType.FLOAT: ("finite numbers", (int, float), None),
    ValueType.STRING: ("strings", (str,), None),
}
_NUMBERS = (ValueType.DOUBLE, ValueType.FLOAT)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float (JSON allows 400 digits)
        return False


def _check_type(name: str, values: list[object], value_type: ValueType) -> None:
    expected, types, bound = _EXPECTED.get(value_type, ("", (), None))
    for value in values if types else ():
        # Exact types: True is not an entity id. JSON parsers take Infinity, NaN and 1e309 (inf).
        if (
            type(value) not in types
            or (bound is not None and isinstance(value, int) and not -bound <= value < bound)
            or (value_type in _NUMBERS and isinstance(value, int | float) and not _finite(value))
        ):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise EntityKeyError(f"{name!r} must hold {expected} (no nulls), got {shown}")


def _not_finite(value: object) -> bool:
    return isinstance(value, float | np.floating) and not math.isfinite(value)


def _finite_on_demand(
    read: OnDemandRead, feature: str, values: list[object], entities: dict[str, list]
) -> list[object]:
    """`values` of an on-demand feature, none of them infinite or NaN.

    A view that reads request fields computed it from the caller's values (an amount of 1e308
    divided by a mean below 1 is infinite): an error naming them. Otherwise the view itself
    cannot compute it from the stored features: no value (NULL_VALUE), never a PRESENT inf."""
    if not any(map(_not_finite, values)):
        return values
    if read.request_fields:
        row = next(i for i, v in enumerate(values) if _not_finite(v))
        given = {name: entities[name][row] for name in read.request_fields}
        raise EntityKeyError(
            f"request field(s) {given} of entity {row} make on-demand feature "
            f"{read.odfv.name}:{feature} {values[row]!r}; it must be a finite number"
        )
    return [None if _not_finite(v) else v for v in values]


def check_entities(plan: ReadPlan, entities: dict[str, list], max_entities: int) -> None:
    """Raises an error naming the problem unless the columns fit the plan."""
    key_types = plan.key_types
    unknown = sorted(set(entities) - set(key_types) - set(plan.request_fields))
    if unknown:
        raise EntityKeyError(
            f"unknown entity key(s) or request field(s) {unknown}; these features take join "
            f"keys {list(plan.join_keys)} and request fields {sorted(plan.request_fields)}"
        )
    missing = [k for k in (*plan.join_keys, *plan.request_fields) if k not in entities]
    if missing:
        raise EntityKeyError(f"missing entity key(s) or request field(s) {missing}")
    lengths = {name: len(values) for name, values in entities.items()}
    count = next(iter(lengths.values()))
    if len(set(lengths.values())) > 1:
        raise EntityKeyError(f"entity columns differ in length: {lengths}")
    if count == 0:
        raise EntityKeyError("no entities given")
    if count > max_entities:
        raise TooManyEntitiesError(
            f"{count} entities in one request; the limit is {max_entities} (split the batch)"
        )
    for name, values in entities.items():
        _check_type(name, values, key_types.get(name) or plan.request_fields[name])


def _output_name(view: str, feature: str, full_feature_names: bool) -> str:
    return f"{view}__{feature}" if full_feature_names else feature


def _on_demand(odfv: OnDemandFeatureView, inputs: dict[str, list]) -> dict[str, list]:
    """The view's outputs as lists (None for null/NaN); python-mode views skip pandas."""
    # Feast types feature_transformation Optional; every view its registry loads has one.
    if odfv.mode == "python":
        outputs = odfv.feature_transformation.udf(inputs)  # type: ignore[union-attr]
        return {
            name: [None if v is None or v != v else v for v in values]  # noqa: PLR0124 (NaN)
            for name, values in outputs.items()
        }
    frame = odfv.feature_transformation.transform(pd.DataFrame(inputs))  # type: ignore[union-attr]
    return {
        name: frame[name].astype(object).where(frame[name].notna(), None).tolist()
        for name in frame.columns
    }


async def read_redis(
    plan: ReadPlan,
    entities: dict[str, list],
    pool: ReadPool,
    *,
    full_feature_names: bool = False,
    now: float | None = None,
) -> LookupResult:
    """The fast path: one pipelined read of every requested field, decoded column by column."""
    commands: list[bytes] = []
    for read in plan.entities:
        if read.around_int64_id is not None:
            before, after = read.around_int64_id
            ids = entities[read.join_keys[0]]
            commands.extend([before + _INT64_ID(i) + after for i in ids])
        else:
            head, tail = read.command_head, read.command_tail
            commands.extend([head + bulk(key) + tail for key in read.layout.keys_for(entities)])
    replies = await pool.execute(commands)
    now_micros = int((time.time() if now is None else now) * 1_000_000)

    columns: dict[tuple[str, str], tuple[list[object], list[str], list[str | None]]] = {}
    start = 0
    count = len(next(iter(entities.values())))
    for read in plan.entities:
        rows = replies[start : start + count]
        start += count
        fields = list(zip(*rows))  # one tuple per requested field, across entities
        feature_at = 0
        ts_at = sum(len(v.features) for v in read.views)
        for view in read.views:
            micros, stamps = EVENT_TIMES.decode(fields[ts_at])
            ts_at += 1
            oldest = now_micros - int(view.ttl.total_seconds() * 1_000_000) if view.ttl else None
            statuses = [
                NOT_FOUND if m is None
                else OUTSIDE_MAX_AGE if oldest is not None and m < oldest
                else PRESENT
                for m in micros
            ]
            for feature, value_type in zip(view.features, view.value_types):
                values = decode_column(fields[feature_at], value_type)
                feature_at += 1
                feature_statuses = statuses if None not in values else [
                    NULL_VALUE if v is None and s is PRESENT else s
                    for v, s in zip(values, statuses)
                ]
                columns[(view.view.name, feature)] = (values, feature_statuses, stamps)

    for odfv_read in plan.on_demand:
        odfv = odfv_read.odfv
        inputs = {
            feature.name: columns[(projection.name, feature.name)][0]
            for projection in odfv.source_feature_view_projections.values()
            for feature in projection.features
        }
        inputs.update({name: entities[name] for name in odfv_read.request_fields})
        outputs = _on_demand(odfv, inputs)
        for feature in odfv_read.features:
            values = _finite_on_demand(odfv_read, feature, outputs[feature], entities)
            statuses = [NULL_VALUE if v is None else PRESENT for v in values]
            columns[(odfv.name, feature)] = (values, statuses, [None] * count)

    names = list(plan.join_keys)
    result = LookupResult(
        feature_names=names,
        values=[entities[k] for k in plan.join_keys],
        statuses=[[PRESENT] * count for _ in plan.join_keys],
        event_timestamps=[[None] * count for _ in plan.join_keys],
    )
    for view_name, feature in plan.outputs:
        values, statuses, stamps = columns[(view_name, feature)]
        names.append(_output_name(view_name, feature, full_feature_names))
        result.values.append(values)
        result.statuses.append(statuses)
        result.event_timestamps.append(stamps)
    return result


def _feast_read(
    store: FeatureStore, plan: ReadPlan, entities: dict[str, list], full_feature_names: bool
) -> LookupResult:
    response = store.get_online_features(
        features=plan.feature_refs, entity_rows=entities, full_feature_names=full_feature_names
    ).proto
    result = LookupResult(list(response.metadata.feature_names.val), [], [], [])
    for column in response.results:
        result.values.append([feast_value_type_to_python_type(v) for v in column.values])
        result.statuses.append([FieldStatus.Name(s) for s in column.statuses])
        # Exact microseconds, written as the Redis path writes them (a float of seconds and
        # nanos loses the last microsecond digits).
        result.event_timestamps.append(_iso([
            ts.seconds * 1_000_000 + ts.nanos // 1_000 if ts.seconds or ts.nanos else None
            for ts in column.event_timestamps
        ]))
    at = {name: i for i, name in enumerate(result.feature_names)}
    for read in plan.on_demand:
        for feature in read.features:
            i = at[_output_name(read.odfv.name, feature, full_feature_names)]
            values = _finite_on_demand(read, feature, result.values[i], entities)
            result.statuses[i] = [
                NULL_VALUE if v is None and s == PRESENT else s
                for v, s in zip(values, result.statuses[i])
            ]
            result.values[i] = values
    return result


async def read_feast(
    store: FeatureStore, plan: ReadPlan, entities: dict[str, list], *, full_feature_names: bool
) -> LookupResult:
    """Any other online store, through Feast's reader (in a thread: it blocks)."""
    return await asyncio.to_thread(_feast_read, store, plan, entities, full_feature_names)
