"""Decoding of Feast's serialized online values without building protobuf objects.

The inverse of `feast_layout.value_slots` / `timestamp_slots` for the scalar types our views use
(a `feast.types.Value` is one tag byte and its payload); other types go through Feast's own
protobuf conversion. A missing hash field (entity or view never written) arrives as None, a null
value as empty bytes: both decode to None. Tests compare against Feast's decoder value by value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import cast

import numpy as np
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_PACKED_DOUBLES = np.dtype([("tag", "u1"), ("value", "<f8")])
_PACKED_SMALL_INTS = np.dtype([("tag", "u1"), ("value", "u1")])  # varints below 128
_TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x18, 0x20, 0x29, 0x35, 0x38
_TAG_STRING = 0x12
_TAG_NANOS = 0x10
_FIXED_WIDTH = {
    ValueType.DOUBLE: (_PACKED_DOUBLES, _TAG_DOUBLE),
    ValueType.INT64: (_PACKED_SMALL_INTS, _TAG_INT64),
    ValueType.INT32: (_PACKED_SMALL_INTS, _TAG_INT32),
}


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The unsigned varint at `position` and the position after it."""
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_value(data: bytes | None) -> object:
    """One serialized `feast.types.Value` as a Python value (None when absent or null)."""
    if not data:
        return None
    tag = data[0]
    if tag == _TAG_DOUBLE:
        return _DOUBLE.unpack_from(data, 1)[0]
    if tag == _TAG_INT64 or tag == _TAG_INT32:
        value = data[1]
        if value < 0x80:
            return value
        return _signed64(_varint(data, 1)[0])  # negative int32s are sign-extended too
    if tag == _TAG_STRING:
        length, start = _varint(data, 1)
        return data[start : start + length].decode()
    if tag == _TAG_FLOAT:
        return _FLOAT.unpack_from(data, 1)[0]
    if tag == _TAG_BOOL:
        return data[1] != 0
    return feast_value_type_to_python_type(Value.FromString(data))


def _fixed_width_values(raw: Sequence[bytes | None], value_type: ValueType) -> list | None:
    """The column decoded in one go when every value is proven to be one tag byte and a payload
    of one width (doubles; ints below 128, one varint byte); None when any value is not.

    Each value's own length, tag and (for ints) varint byte are checked: a byte total alone can
    match with missing values and longer varints adding up to it."""
    packed, tag = _FIXED_WIDTH[value_type]
    # Typed as present: len(None) raises below, so past it every value is bytes.
    present = cast("Sequence[bytes]", raw)
    try:
        widths = set(map(len, present))
    except TypeError:  # a missing value (None)
        return None
    if widths != {packed.itemsize}:
        return None
    values = np.frombuffer(b"".join(present), packed)
    if not (values["tag"] == tag).all():
        return None
    if packed is _PACKED_SMALL_INTS and (values["value"] >= 0x80).any():
        return None
    return values["value"].tolist()


# Ints of more than one varint byte: protobuf's C parser (upb) takes a third of the time of our
# Python varint loop (measured in CPU time, 100 values); the tag is checked first, so a value of
# another type still goes through decode_value.
_PARSED_INTS = {ValueType.INT64: (_TAG_INT64, "int64_val"), ValueType.INT32: (_TAG_INT32, "int32_val")}


def decode_column(raw: Sequence[bytes | None], value_type: ValueType) -> list[object]:
    """A column of serialized values (one per entity) as Python values."""
    if len(raw) > 4 and value_type in _FIXED_WIDTH:
        decoded = _fixed_width_values(raw, value_type)
        if decoded is not None:
            return decoded
    if value_type in _PARSED_INTS:
        tag, field = _PARSED_INTS[value_type]
        parse = Value.FromString
        return [
            getattr(parse(r), field) if r and r[0] == tag and r[1] >= 0x80 else decode_value(r)
            for r in raw
        ]
    return [decode_value(r) for r in raw]


def decode_timestamps_micros(raw: Sequence[bytes | None]) -> list[int | None]:
    """A column of serialized Timestamps as microseconds (None where missing), parsed by
    protobuf's C parser: a third of the CPU of `decode_timestamp_micros`' Python loop."""
    parse = Timestamp.FromString
    micros: list[int | None] = []
    for data in raw:
        if data is None:
            micros.append(None)
        else:
            stamp = parse(data)
            micros.append(stamp.seconds * 1_000_000 + stamp.nanos // 1_000)
    return micros


def decode_timestamp_micros(data: bytes | None) -> int | None:
    """A serialized `google.protobuf.Timestamp` as microseconds since the epoch."""
    if data is None:
        return None
    seconds = nanos = 0
    position = 0
    while position < len(data):
        tag = data[position]
        value, position = _varint(data, position + 1)
        if tag == _TAG_NANOS:
            nanos = value
        else:
            seconds = _signed64(value)
    return seconds * 1_000_000 + nanos // 1_000
