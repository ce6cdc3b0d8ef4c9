"""Decoding Feast's online value bytes without protobuf objects, checked against Feast's decoder."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.online.lookup import _iso
from featurestore.online.values import decode_column, decode_timestamp_micros, decode_value

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
