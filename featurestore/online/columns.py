"""A whole column of serialized `feast.types.Value`s of one scalar type, decoded by one protobuf parse.

A Value holding an int64 is the bytes of field 4 (tag 0x20, a varint); so the concatenation of
a column of them is, byte for byte, a message with `repeated int64 v = 4`, and protobuf's C
parser (upb) decodes the whole column in one call instead of one Python call per value. The same
holds for each scalar type at its own field number. The parse is used only when its result is
provably one value per entity, in order (`_aligned`); otherwise None, and the caller decodes
value by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, cast

from feast.value_type import ValueType
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.message import DecodeError

_F = descriptor_pb2.FieldDescriptorProto
# The value type, its field in feast.types.Value (number, protobuf type), and its width when
# fixed (tag + 8 or 4 bytes); None: a varint.
_COLUMNS = {
    ValueType.INT32: (3, _F.TYPE_INT32, None),
    ValueType.INT64: (4, _F.TYPE_INT64, None),
    ValueType.DOUBLE: (5, _F.TYPE_DOUBLE, 9),
    ValueType.FLOAT: (6, _F.TYPE_FLOAT, 5),
    ValueType.BOOL: (7, _F.TYPE_BOOL, None),
}
_WIRE_TYPE = {None: 0, 9: 1, 5: 5}  # varint, fixed64, fixed32


def _message_classes() -> dict[ValueType, tuple[Any, int, int | None]]:
    # proto2: the repeated fields are unpacked, as the concatenated Values are (a parser takes
    # either encoding anyway). A pool of its own: no name can clash with Feast's protos.
    file = descriptor_pb2.FileDescriptorProto(
        name="featurestore/value_columns.proto", package="featurestore_columns", syntax="proto2"
    )
    for value_type, (number, kind, _) in _COLUMNS.items():
        file.message_type.add(name=value_type.name).field.add(
            name="v", number=number, type=kind, label=_F.LABEL_REPEATED
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        value_type: (
            message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"featurestore_columns.{value_type.name}")
            ),
            number << 3 | _WIRE_TYPE[width],
            width,
        )
        for value_type, (number, _, width) in _COLUMNS.items()
    }


_CLASSES = _message_classes()
_FIRST, _LAST = itemgetter(0), itemgetter(-1)


def _aligned(present: Sequence[bytes], tag: int, width: int | None) -> bool:
    """Whether the parse of the joined bytes can only split them where the values split.

    Fixed width: every value is the tag and `width - 1` bytes. Varints: every value starts with
    the tag, is at least 2 bytes and ends with a byte below 0x80; with exactly one parsed field
    per value and nothing else parsed (checked after the parse), each value is then exactly one
    field: the first value starts at a field; a value that starts at a field holds only that one
    (it holds at least one, and there are as many fields as values), and its last byte, below
    0x80, is not a varint's continuation, so it ends that field and the next value starts at the
    next one."""
    if set(map(_FIRST, present)) != {tag}:
        return False
    if width is not None:
        return set(map(len, present)) == {width}
    return min(map(len, present)) >= 2 and max(map(_LAST, present)) < 0x80


def decode_scalar_column(raw: Sequence[bytes | None], value_type: ValueType) -> list | None:
    """The column's values (None where missing or null), or None when the column is not one
    aligned value of `value_type` per entity (another type, a malformed or repeated field)."""
    if value_type not in _CLASSES or not raw:
        return None
    message, tag, width = _CLASSES[value_type]
    complete = None not in raw and b"" not in raw
    # Typed as bytes: no None (nor b"") is left in it.
    present = cast("Sequence[bytes]", raw if complete else [r for r in raw if r])
    if not present:
        return [None] * len(raw)
    if not _aligned(present, tag, width):
        return None
    try:
        parsed = message.FromString(b"".join(present))
    except DecodeError:  # a truncated or malformed value: decoded (and refused) value by value
        return None
    values = parsed.v
    if len(values) != len(present) or len(unknown_fields.UnknownFieldSet(parsed)):
        return None
    if complete:
        return list(values)
    found = iter(values)
    return [next(found) if r else None for r in raw]
