"""Decoding Feast's online value bytes without protobuf objects, checked against Feast's decoder."""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.event_times import EventTimes
from featurestore.online.lookup import _iso
from featurestore.online.values import (
    decode_column,
    decode_timestamp_micros,
    decode_timestamps_micros,
    decode_value,
)

rng = random.Random(5)
SAMPLES = {
    ValueType.INT64: [0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, *rng.sample(range(-10**12, 10**12), 50)],
    ValueType.INT32: [0, 5, -7, 2**31 - 1, -(2**31), *rng.sample(range(-10**6, 10**6), 50)],
    ValueType.DOUBLE: [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, *[rng.uniform(-1e6, 1e6) for _ in range(50)]],
    ValueType.FLOAT: [0.0, 1.5, -3.25, 3.4e38],
    ValueType.BOOL: [True, False],
    ValueType.STRING: ["", "DE", "grocery", "żółw ✓", "x" * 300],
}


def _feast(raw: bytes | None) -> object:
    return None if not raw else feast_value_type_to_python_type(Value.FromString(raw))


@pytest.mark.parametrize("value_type", list(SAMPLES))
def test_values_decode_as_feast_decodes_them(value_type) -> None:
    values = SAMPLES[value_type]
    raw = [p.SerializeToString() for p in python_values_to_proto_values(values, value_type)]
    raw += [b"", None]  # a null value, a field never written
    expected = [_feast(r) for r in raw]
    assert [decode_value(r) for r in raw] == expected
    assert decode_column(raw, value_type) == expected
    present = raw[:-2]
    assert decode_column(present, value_type) == [_feast(r) for r in present]


def test_a_column_of_small_ints_and_of_doubles_takes_the_vector_path_exactly() -> None:
    small = list(range(100))
    raw = [p.SerializeToString() for p in python_values_to_proto_values(small, ValueType.INT64)]
    assert decode_column(raw, ValueType.INT64) == small
    doubles = [math.pi * i for i in range(-50, 50)]
    raw = [p.SerializeToString() for p in python_values_to_proto_values(doubles, ValueType.DOUBLE)]
    assert decode_column(raw, ValueType.DOUBLE) == doubles


@pytest.mark.parametrize("micros", [0, 1, 999_999, 1_772_499_356_430_000, -1, -1_500_000])
def test_timestamps_decode_to_microseconds(micros) -> None:
    stamp = Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1_000)
    assert decode_timestamp_micros(stamp.SerializeToString()) == micros
    assert decode_timestamp_micros(None) is None


def test_iso_timestamps_are_the_same_for_one_entity_and_for_many() -> None:
    micros = [int(m) for m in np.random.default_rng(2).integers(0, 2**51, 40)] + [None, 0]
    many = _iso(micros)
    assert many == [s for m in micros for s in _iso([m])]
    assert many[0].endswith("Z") and many[-2] is None


# ---------------------------------------------------------------------------------------------
# Properties: any mix of missing fields, nulls and values of every scalar type decodes exactly as
# Feast's decoder decodes it, whichever path (vector or value by value) the column takes.

MISSING, NULL = object(), object()  # a hash field never written (None), a null value (b"")
_INT64 = st.one_of(
    st.integers(0, 127),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([128, 222, 255, 1285, 2811, 16_383, 16_384, -1, 2**63 - 1, -(2**63)]),
)
SCALARS = {
    ValueType.INT64: ("int64_val", _INT64),
    ValueType.INT32: (
        "int32_val", st.one_of(st.integers(0, 127), st.integers(-(2**31), 2**31 - 1))
    ),
    ValueType.DOUBLE: ("double_val", st.floats(width=64)),
    ValueType.FLOAT: ("float_val", st.floats(width=32)),
    ValueType.BOOL: ("bool_val", st.booleans()),
    ValueType.STRING: ("string_val", st.text(max_size=200)),
    ValueType.BYTES: ("bytes_val", st.binary(max_size=200)),
    # Seconds of years 1 to 9999, the range Feast's decoder turns into a datetime.
    ValueType.UNIX_TIMESTAMP: (
        "unix_timestamp_val", st.integers(-62_135_596_800, 253_402_300_799)
    ),
}


def _serialized(field: str, cell: object) -> bytes | None:
    if cell is MISSING:
        return None
    if cell is NULL:
        return b""
    return Value(**{field: cell}).SerializeToString()


def _same(ours: list[object], feasts: list[object]) -> bool:
    """Equal value by value and type by type, NaN equal to NaN."""
    return len(ours) == len(feasts) and all(
        type(a) is type(b) and (a == b or (a != a and b != b))  # noqa: PLR0124 (NaN)
        for a, b in zip(ours, feasts)
    )


@st.composite
def _column(draw, value_type: ValueType) -> list[bytes | None]:
    field, values = SCALARS[value_type]
    cells = draw(st.lists(st.one_of(st.just(MISSING), st.just(NULL), values), max_size=40))
    return [_serialized(field, c) for c in cells]


@pytest.mark.parametrize("value_type", list(SCALARS), ids=lambda t: t.name)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_column_decodes_as_feasts_decoder_decodes_it(value_type, data) -> None:
    raw = data.draw(_column(value_type))
    expected = [_feast(r) for r in raw]
    assert _same(decode_column(raw, value_type), expected)
    assert _same([decode_value(r) for r in raw], expected)


@st.composite
def _ints_as_long_as_small_ones(draw) -> list[bytes | None]:
    """Columns of more than 4 ints whose bytes total 2 per entity although some are missing or
    null and others need 2 or 3 varint bytes: the widths only a per-value check tells apart."""
    gaps = draw(st.integers(1, 5))
    short = [draw(st.sampled_from([None, b""])) for _ in range(gaps)]
    extra_bytes = 2 * gaps
    wide = []
    while extra_bytes:
        width = draw(st.integers(1, min(2, extra_bytes)))  # 1 or 2 bytes over the 2 of a small
        wide.append(draw(st.integers(128, 16_383) if width == 1 else st.integers(16_384, 2**21 - 1)))
        extra_bytes -= width
    small = draw(st.lists(st.integers(0, 127), min_size=max(0, 5 - gaps - len(wide)), max_size=8))
    cells = draw(st.permutations([*short, *wide, *small]))
    return [
        c if c is None or isinstance(c, bytes) else Value(int64_val=c).SerializeToString()
        for c in cells
    ]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(raw=_ints_as_long_as_small_ones())
def test_missing_and_wide_ints_adding_up_to_the_small_width_decode_exactly(raw) -> None:
    assert sum(len(r or b"") for r in raw) == 2 * len(raw)
    assert _same(decode_column(raw, ValueType.INT64), [_feast(r) for r in raw])


def test_the_reported_columns_decode_value_by_value() -> None:
    """Issue 12's repro: two unknown cards among four whose ages need two varint bytes."""
    ages = [None, 2811, 1285, None, 1675, 222]
    raw = [None if a is None else Value(int64_val=a).SerializeToString() for a in ages]
    assert decode_column(raw, ValueType.INT64) == ages


_YEAR_1_MICROS = (datetime.min.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    microseconds=1
)
_YEAR_9999_MICROS = (datetime.max.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    microseconds=1
)
_MICROS = st.one_of(
    st.integers(_YEAR_1_MICROS, _YEAR_9999_MICROS),
    st.sampled_from([_YEAR_1_MICROS, _YEAR_9999_MICROS, 0, -1, 1, 999_999, -1_000_000]),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(micros=st.lists(_MICROS, min_size=1, max_size=12))
def test_event_times_decode_and_print_as_utc_over_years_1_to_9999(micros) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    raw = [
        Timestamp(seconds=m // 1_000_000, nanos=m % 1_000_000 * 1_000).SerializeToString()
        for m in micros
    ]
    assert [decode_timestamp_micros(r) for r in raw] == micros
    assert decode_timestamps_micros([*raw, None]) == [*micros, None]  # protobuf's parser
    expected = [
        (epoch + timedelta(microseconds=m)).replace(tzinfo=None).isoformat(timespec="microseconds")
        + "Z"
        for m in micros
    ]
    assert _iso(micros) == expected  # numpy's vector formatting above 8 values
    assert [s for m in micros for s in _iso([m])] == expected


# ---------------------------------------------------------------------------------------------
# The column parse (featurestore/online/columns.py): taken for every well-formed column of one
# scalar type, refused for anything it could split elsewhere than the values split.

_COLUMN_TYPES = [ValueType.INT64, ValueType.INT32, ValueType.DOUBLE, ValueType.FLOAT, ValueType.BOOL]
_EDGES = {
    ValueType.INT64: [0, 127, 128, -1, 2**63 - 1, -(2**63), 2**32, -(2**31) - 1],
    ValueType.INT32: [0, 127, 128, -1, 2**31 - 1, -(2**31)],
    ValueType.DOUBLE: [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308],
    ValueType.FLOAT: [math.nan, math.inf, -math.inf, -0.0, 1e-45, 3.4028234663852886e38],
    ValueType.BOOL: [True, False],
}


@pytest.mark.parametrize("value_type", _COLUMN_TYPES, ids=lambda t: t.name)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_well_formed_column_takes_the_column_parse(value_type, data) -> None:
    from featurestore.online.columns import decode_scalar_column

    field, values = SCALARS[value_type]
    cells = data.draw(st.lists(
        st.one_of(st.just(MISSING), st.just(NULL), values, st.sampled_from(_EDGES[value_type])),
        max_size=40,
    ))
    raw = [_serialized(field, c) for c in cells]
    column = decode_scalar_column(raw, value_type)
    if not raw:
        assert column is None  # nothing to parse: decoded value by value (to nothing)
    else:
        assert column is not None
        assert _same(column, [_feast(r) for r in raw])


def test_empty_all_missing_and_all_null_columns() -> None:
    for value_type in _COLUMN_TYPES:
        assert decode_column([], value_type) == []
        assert decode_column([None] * 6, value_type) == [None] * 6
        assert decode_column([b""] * 6, value_type) == [None] * 6


def _cell_kinds(value_type: ValueType):
    """A cell of a hostile column: a value of the column's type, of another type, two values in
    one (Feast's parser keeps the last), a cut-short value, a varint with needless bytes."""
    field, values = SCALARS[value_type]
    one = values.map(lambda v: Value(**{field: v}).SerializeToString())
    other = st.sampled_from(_COLUMN_TYPES + [ValueType.STRING]).flatmap(
        lambda t: SCALARS[t][1].map(lambda v, t=t: Value(**{SCALARS[t][0]: v}).SerializeToString())
    )
    return st.one_of(
        one, one, other,
        st.tuples(one, one | other).map(lambda pair: pair[0] + pair[1]),
        one.flatmap(lambda r: st.integers(1, max(1, len(r) - 1)).map(lambda n, r=r: r[:n])),
        st.sampled_from([b"\x20\x85\x00", b"\x18\x80\x80\x00", b"\x38\x02", b"\x20", b"\x29"]),
        st.just(None), st.just(b""),
    )


@pytest.mark.parametrize("value_type", _COLUMN_TYPES, ids=lambda t: t.name)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_column_parse_result_is_always_feasts_decoding(value_type, data) -> None:
    """Whatever the bytes, a column the parse accepts decodes as Feast's decoder decodes each
    value (which therefore can decode each one); one it refuses goes value by value."""
    from featurestore.online.columns import decode_scalar_column

    raw = data.draw(st.lists(_cell_kinds(value_type), min_size=1, max_size=12))
    column = decode_scalar_column(raw, value_type)
    if column is not None:
        assert _same(column, [_feast(r) for r in raw])


@pytest.mark.parametrize("raw", [
    [b"\x20", b"\x05\x20\x06"],  # a value cut after its tag, the next holding two fields' bytes
    [b"\x20\x80", b"\x01\x20\x05"],  # a varint split across two values
    [b"\x20\x05\x20\x06", b"\x20\x07"],  # two fields in one value: three fields, two values
    [b"\x20\x05", b"\x18\x05"],  # an int32 in an int64 column
])
def test_bytes_that_split_elsewhere_than_the_values_are_refused(raw) -> None:
    from featurestore.online.columns import decode_scalar_column

    assert decode_scalar_column(raw, ValueType.INT64) is None


@settings(max_examples=100, deadline=None, derandomize=True)
@given(batches=st.lists(st.lists(st.one_of(st.none(), st.sampled_from(range(6)), _MICROS),
                                 max_size=12), min_size=1, max_size=6),
       size=st.integers(1, 8))
def test_remembered_event_times_are_the_decoded_ones(batches, size) -> None:
    """Lookup after lookup (times repeating, missing fields, more distinct times than the
    memory holds), the remembered answer is the decoded and formatted one."""
    times = EventTimes(size)
    widest = 0  # one lookup's distinct times are all kept, even past the size
    for batch in batches:
        widest = max(widest, len(set(batch) - {None}))
        raw = [None if m is None else Timestamp(seconds=m // 1_000_000,
                                                nanos=m % 1_000_000 * 1_000).SerializeToString()
               for m in batch]
        assert times.decode(raw) == (batch, _iso(batch))
        assert len(times._known) <= max(size, widest) + 1  # and the missing field's entry


# ---------------------------------------------------------------------------------------------
# Several fields in one byte string (concatenated Values are legal protobuf): the last
# occurrence of the oneof wins, unknown fields are skipped, and bytes protobuf rejects raise its
# DecodeError, exactly as Feast's decoder (`Value.FromString`, then Feast's conversion) does.


def _varint_bytes(value: int, padding: int = 0) -> bytes:
    """`value` (>= 0) as a varint, with `padding` needless continuation bytes (still one
    varint; protobuf reads at most 10 bytes)."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value and not padding:
            out.append(low)
            return bytes(out)
        if not value:
            padding -= 1
        out.append(low | 0x80)


_UTF8_EDGES = [
    b"", b"DE", "żółw ✓".encode(), "😀".encode(), b"\xef\xbf\xbf",  # valid, U+FFFF included
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xc3",  # not
]


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | wire) + payload


_VARINT_FIELDS = {3: "int32", 4: "int64", 7: "bool", 19: "null"}
_UNKNOWN_NUMBERS = [9, 10, 30, 31, 49, 100, 1000, 2**29 - 1]
_WIRE_PAYLOADS = {
    0: st.integers(0, 2**64 - 1).map(_varint_bytes),
    1: st.binary(min_size=8, max_size=8),
    2: st.binary(max_size=12).map(lambda b: _varint_bytes(len(b)) + b),
    5: st.binary(min_size=4, max_size=4),
}


def _piece() -> st.SearchStrategy[bytes]:
    """One field of a Value, or a message of one: every scalar type (edges, NaN, inf, 64-bit
    extremes), lists, null, varints with needless bytes and bits past 64, strings of any
    bytes (lone surrogates, overlong forms), unknown field numbers, known numbers with
    another wire type, and nothing."""
    field_values = [
        st.tuples(st.just(field), values) for field, values in SCALARS.values()
    ] + [st.tuples(st.just(SCALARS[t][0]), st.sampled_from(_EDGES[t])) for t in _COLUMN_TYPES]
    scalars = st.one_of(*field_values).map(lambda fv: Value(**{fv[0]: fv[1]}).SerializeToString())
    lists = st.one_of(
        st.lists(_INT64, max_size=4).map(lambda v: Value(int64_list_val={"val": v})),
        st.lists(st.text(max_size=5), max_size=3).map(lambda v: Value(string_list_val={"val": v})),
        st.lists(st.floats(), max_size=3).map(lambda v: Value(double_list_val={"val": v})),
        st.just(Value(null_val=0)),
    ).map(lambda m: m.SerializeToString())
    padded = st.builds(
        lambda number, value, padding: _field(number, 0, _varint_bytes(value, padding)),
        st.sampled_from(list(_VARINT_FIELDS)),
        st.one_of(st.integers(0, 2**64 - 1), st.integers(2**64, 2**70 - 1), st.integers(0, 3)),
        st.integers(0, 10),
    )
    strings = st.one_of(st.sampled_from(_UTF8_EDGES), st.binary(max_size=8)).map(
        lambda b: _field(2, 2, _varint_bytes(len(b)) + b)
    )
    unknown = st.sampled_from(sorted(_WIRE_PAYLOADS)).flatmap(lambda wire: st.builds(
        _field, st.sampled_from(_UNKNOWN_NUMBERS), st.just(wire), _WIRE_PAYLOADS[wire]))
    wrong_wire = st.builds(  # a double's number as a varint, an int's number as fixed32...
        _field, st.sampled_from([2, 3, 4, 5, 6, 7]), st.sampled_from([0, 1, 5]),
        st.sampled_from([b"\x01", b"\x00" * 8, b"\x00" * 4]),
    )
    return st.one_of(scalars, scalars, lists, padded, strings, unknown, wrong_wire, st.just(b""))


def _feasts_or_error(raw: bytes | None) -> tuple[str, object]:
    try:
        return "value", _feast(raw)
    except DecodeError:
        return "rejected", None


def _ours_or_error(decode, raw) -> tuple[str, object]:
    try:
        return "value", decode(raw)
    except DecodeError:
        return "rejected", None


def _agree(ours: tuple[str, object], feasts: tuple[str, object]) -> bool:
    return ours[0] == feasts[0] and _same([ours[1]], [feasts[1]])


_CONCATENATED = st.lists(_piece(), min_size=1, max_size=5).map(b"".join)
# ... and cut anywhere: what protobuf rejects (or, cut at a field's end, accepts) either way.
_ANY_BYTES = st.one_of(
    _CONCATENATED, _CONCATENATED,
    _CONCATENATED.flatmap(lambda r: st.integers(0, len(r)).map(lambda n, r=r: r[:n])),
)


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(raw=_ANY_BYTES)
def test_any_concatenation_of_values_decodes_as_feasts_decoder_decodes_it(raw) -> None:
    assert _agree(_ours_or_error(decode_value, raw), _feasts_or_error(raw))


@pytest.mark.parametrize("value_type", [*_COLUMN_TYPES, ValueType.STRING], ids=lambda t: t.name)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_column_of_concatenations_decodes_as_feasts_decoder_decodes_it(value_type, data) -> None:
    """A column mixing plain values of its type (so the column parse is tried) with
    concatenations: each decoded as Feast decodes it, or DecodeError if Feast rejects one."""
    field, values = SCALARS[value_type]
    plain = values.map(lambda v: Value(**{field: v}).SerializeToString())
    raw = data.draw(st.lists(st.one_of(plain, plain, _ANY_BYTES, st.none()), min_size=1,
                             max_size=12))
    feasts = [_feasts_or_error(r) for r in raw]
    if any(kind == "rejected" for kind, _ in feasts):
        with pytest.raises(DecodeError):
            decode_column(raw, value_type)
    else:
        assert _same(decode_column(raw, value_type), [value for _, value in feasts])


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x20\x05\x20\x06", 6),  # two int64s: the last
    (b"\x20\x05\x29" + struct.pack("<d", 1.5), 1.5),  # an int64, then a double: the double
    (b"\x29" + struct.pack("<d", 1.5) + b"\x12\x02DE", "DE"),
    (b"\x12\x02DE\x38\x01", True),
    (b"\x20\x05\x78\x01", 5),  # an unknown field (15) after the value is skipped
    (b"\x18" + b"\xff" * 4 + b"\x7f", -1),  # an int32 varint past 32 bits: its low 32
    (b"\x20" + b"\xff" * 9 + b"\x7f", -1),  # a 10th varint byte's bits past 64 are dropped
])
def test_the_last_field_wins_as_in_feasts_decoder(raw, expected) -> None:
    assert _feast(raw) == expected
    assert decode_value(raw) == expected


@pytest.mark.parametrize("raw", [
    b"\x20", b"\x29\x00", b"\x12\x03ab", b"\x12\x80", b"\x12\x03\xed\xa0\x80",
    b"\x20" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
])
def test_bytes_feast_rejects_raise_its_decode_error(raw) -> None:
    with pytest.raises(DecodeError):
        _feast(raw)
    with pytest.raises(DecodeError):
        decode_value(raw)
