"""Feast's Redis online layout, encoded a whole Arrow column at a time.

Layout (feast.infra.online_stores.redis): one hash per entity, keyed by
`serialize_entity_key(entity) + project`; field `mmh3("<view>:<feature>")` (4 bytes) holds the
serialized `feast.types.Value`, field `_ts:<view>` the serialized `google.protobuf.Timestamp`
of the row's event time. The encoders here produce the same bytes as Feast's protobuf path
(tests compare them byte for byte); types without a vector encoder go through Feast's own.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from featurestore.definitions import ViewDefinition
from featurestore.online import resp
from featurestore.online.resp import Slot

_SENTINEL = 0x0102030405060708
# Tag bytes of feast.types.Value's oneof fields: (field number << 3) | wire type.
_TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x18, 0x20, 0x29, 0x35, 0x38
_TAG_STRING = 0x12
# google.protobuf.Timestamp: seconds (1, varint), nanos (2, varint).
_TAG_SECONDS, _TAG_NANOS = 0x08, 0x10


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _tag(tag: int, present: np.ndarray) -> Slot:
    return resp.fixed(np.full((len(present), 1), tag, dtype=np.uint8), present)


def _fixed_width(tag: int, values: np.ndarray, present: np.ndarray) -> list[Slot]:
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    return [_tag(tag, present), resp.fixed(raw, present)]


def value_slots(column: pa.Array | pa.ChunkedArray, value_type: ValueType) -> list[Slot]:
    """Serialized `feast.types.Value` per row (empty bytes for null, as Feast writes)."""
    array = _array(column)
    present = array.is_valid().to_numpy(zero_copy_only=False)
    if value_type == ValueType.DOUBLE:
        values = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        return _fixed_width(_TAG_DOUBLE, values.astype("<f8"), present & ~np.isnan(values))
    if value_type == ValueType.FLOAT:
        values = array.cast(pa.float32()).fill_null(0.0).to_numpy(zero_copy_only=False)
        return _fixed_width(_TAG_FLOAT, values.astype("<f4"), present & ~np.isnan(values))
    if value_type in (ValueType.INT64, ValueType.INT32):
        values = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        tag = _TAG_INT64 if value_type == ValueType.INT64 else _TAG_INT32
        return [_tag(tag, present), resp.varint(values, present)]
    if value_type == ValueType.BOOL:
        values = array.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False)
        return [_tag(_TAG_BOOL, present), resp.fixed(values.astype(np.uint8)[:, None], present)]
    if value_type == ValueType.STRING:
        strings = array.cast(pa.large_string())
        offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[
            strings.offset : strings.offset + len(strings) + 1
        ]
        data = strings.buffers()[2]
        buffer = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        content = resp.from_utf8(offsets, buffer, present)
        return [_tag(_TAG_STRING, present), resp.varint(content.lengths, present), content]
    protos = python_values_to_proto_values(array.to_pylist(), value_type)
    return [resp.from_bytes([p.SerializeToString() for p in protos])]


def timestamp_slots(micros: np.ndarray) -> list[Slot]:
    """Serialized `google.protobuf.Timestamp` (seconds and nanos; zero fields omitted)."""
    seconds = np.floor_divide(micros, 1_000_000)
    nanos = (micros - seconds * 1_000_000) * 1_000
    has_seconds, has_nanos = seconds != 0, nanos != 0
    return [
        _tag(_TAG_SECONDS, has_seconds),
        resp.varint(seconds, has_seconds),
        _tag(_TAG_NANOS, has_nanos),
        resp.varint(nanos, has_nanos),
    ]


def event_micros(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    array = _array(column)
    if pa.types.is_timestamp(array.type) and array.type.tz is None:
        array = pc.assume_timezone(array, "UTC")
    return array.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


class RedisLayout:
    """Where and how one feature view's rows are stored in Redis."""

    def __init__(self, view: ViewDefinition, config: RepoConfig) -> None:
        self.view = view
        self.project = config.project
        self.key_version = config.entity_key_serialization_version
        name = _versioned_fv_name(view.feast_view, config)
        self.ts_field = f"_ts:{name}".encode()
        self.feature_fields = {f.name: _mmh3(f"{name}:{f.name}") for f in view.features}
        self.value_types = {f.name: f.dtype.to_value_type() for f in view.features}
        self.key_types = [k.dtype.to_value_type() for k in view.join_keys]
        self._int64_key = self._single_int64_key_template()

    def _single_int64_key_template(self) -> tuple[bytes, bytes] | None:
        if self.key_types != [ValueType.INT64]:
            return None
        key = serialize_entity_key(
            EntityKey(
                join_keys=[self.view.join_keys[0].name],
                entity_values=[Value(int64_val=_SENTINEL)],
            ),
            entity_key_serialization_version=self.key_version,
        )
        prefix, found, suffix = key.partition(struct.pack("<q", _SENTINEL))
        if not found:
            return None
        return prefix, suffix + self.project.encode()

    def key_slots(self, table: pa.Table) -> list[Slot]:
        """The Redis key of each row's entity."""
        rows = table.num_rows
        if self._int64_key is not None:
            prefix, suffix = self._int64_key
            ids = _array(table.column(self.view.join_keys[0].name)).cast(pa.int64()).to_numpy()
            raw = ids.astype("<i8").view(np.uint8).reshape(rows, 8)
            return [resp.constant(prefix, rows), resp.fixed(raw), resp.constant(suffix, rows)]
        return [resp.from_bytes(self.keys_slow(table))]

    @property
    def int64_key_template(self) -> tuple[bytes, bytes] | None:
        """(prefix, suffix) around the 8 little-endian id bytes, for a single INT64 join key."""
        return self._int64_key

    def keys_for(self, columns: dict[str, list]) -> list[bytes]:
        """The Redis keys of entities given as Python values per join key (a lookup's keys)."""
        if self._int64_key is not None:
            prefix, suffix = self._int64_key
            pack_id = struct.Struct("<q").pack
            return [prefix + pack_id(i) + suffix for i in columns[self.view.join_keys[0].name]]
        return self.keys_slow(pa.table({k.name: columns[k.name] for k in self.view.join_keys}))

    def keys_slow(self, table: pa.Table) -> list[bytes]:
        names = [k.name for k in self.view.join_keys]
        columns = [
            python_values_to_proto_values(table.column(n).to_pylist(), t)
            for n, t in zip(names, self.key_types)
        ]
        return [
            _redis_key(
                self.project,
                EntityKey(join_keys=names, entity_values=list(values)),
                entity_key_serialization_version=self.key_version,
            )
            for values in zip(*columns)
        ]
