"""Decoding of Feast's serialized online values without building protobuf objects.

The inverse of `feast_layout.value_slots` / `timestamp_slots` for the scalar types our views use:
a `feast.types.Value` that is exactly one field of those types, tag byte and payload and nothing
after it (as every writer of one value serializes it), is read here. Any other bytes go through
protobuf's parser and Feast's own conversion, so they decode as Feast decodes them: bytes holding
several fields (concatenated messages are legal protobuf) yield the last occurrence of the oneof,
unknown fields are skipped, and bytes protobuf rejects (cut short, invalid UTF-8 in a string, a
varint over 10 bytes) raise protobuf's DecodeError, as Feast's decoder does. A missing hash field
(entity or view never written) arrives as None, a null value as empty bytes: both decode to None.
Tests compare against Feast's decoder on any concatenation of values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.online.columns import decode_scalar_column

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
# A column parse has a fixed cost (its checks, a join, a message): for fewer values one call per
# value is as fast.
_COLUMN_PARSE_FROM = 5
_TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x18, 0x20, 0x29, 0x35, 0x38
_TAG_STRING = 0x12
_TAG_NANOS = 0x10


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


def _parsed(data: bytes) -> object:
    """Feast's decoding: protobuf's parser (last occurrence wins), then Feast's conversion."""
    return feast_value_type_to_python_type(Value.FromString(data))


def _int_field(data: bytes, tag: int) -> object:
    """An int32 or int64 field that is the whole of `data`, as protobuf reads it: a varint of
    up to 10 bytes, its bits past 64 (int32: past 32) dropped, two's complement."""
    if not 2 <= len(data) <= 11 or data[-1] >= 0x80:
        return _parsed(data)  # no varint, over 10 varint bytes (rejected), or cut short
    value, end = _varint(data, 1)
    if end != len(data):
        return _parsed(data)  # more than the one field
    if tag == _TAG_INT32:
        value &= 0xFFFF_FFFF
        return value - (1 << 32) if value >= 1 << 31 else value
    return _signed64(value & 0xFFFF_FFFF_FFFF_FFFF)


def _length(data: bytes) -> tuple[int, int]:
    """The length varint after the tag and where the payload starts; (-1, 0) when cut short."""
    try:
        return _varint(data, 1)
    except IndexError:
        return -1, 0


def decode_value(data: bytes | None) -> object:
    """One serialized `feast.types.Value` as a Python value (None when absent or null), as
    Feast's decoder decodes it; raises protobuf's DecodeError on bytes protobuf rejects."""
    if not data:
        return None
    tag, size = data[0], len(data)
    # Each fast case checks the field ends exactly where the bytes end; anything else (another
    # field after it, which protobuf would let win) is parsed.
    if tag == _TAG_DOUBLE and size == 9:
        return _DOUBLE.unpack_from(data, 1)[0]
    if tag == _TAG_INT64 or tag == _TAG_INT32:
        if size == 2 and data[1] < 0x80:
            return data[1]
        return _int_field(data, tag)
    if tag == _TAG_STRING and size > 1:
        length, start = (data[1], 2) if data[1] < 0x80 else _length(data)
        if start + length == size:
            try:
                return data[start:].decode()
            except UnicodeDecodeError:
                pass  # protobuf's verdict (it rejects invalid UTF-8) and its error
    elif tag == _TAG_FLOAT and size == 5:
        return _FLOAT.unpack_from(data, 1)[0]
    elif tag == _TAG_BOOL and size == 2 and data[1] < 0x80:
        return data[1] != 0
    return _parsed(data)


def decode_column(raw: Sequence[bytes | None], value_type: ValueType) -> list[object]:
    """A column of serialized values (one per entity) as Python values: a column of one scalar
    type in one protobuf parse (`columns`), any other value by value."""
    if len(raw) >= _COLUMN_PARSE_FROM:
        decoded = decode_scalar_column(raw, value_type)
        if decoded is not None:
            return decoded
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
