"""The vectorized encoders give the bytes Feast's protobuf path gives, value for value."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.online import resp
from featurestore.online.feast_layout import event_micros, timestamp_slots, value_slots


def _rows(slots: list[resp.Slot]) -> list[bytes]:
    data = np.concatenate([s.data for s in slots], axis=1)
    mask = np.concatenate(
        [np.arange(s.data.shape[1])[None, :] < s.lengths[:, None] for s in slots], axis=1
    )
    return [bytes(row[m]) for row, m in zip(data, mask)]


CASES = [
    (ValueType.DOUBLE, pa.float64(), [0.0, -1.5, 1e308, 5e-324, None, math.nan, 12.34]),
    (ValueType.FLOAT, pa.float32(), [0.0, -1.5, 3.25, None]),
    (ValueType.INT64, pa.int64(), [0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, None]),
    (ValueType.INT32, pa.int32(), [0, 1, -1, 2**31 - 1, -(2**31), None]),
    (ValueType.BOOL, pa.bool_(), [True, False, None]),
    (ValueType.STRING, pa.string(), ["", "DE", "ünïcödé", "x" * 300, None]),
]


@pytest.mark.parametrize(("value_type", "arrow_type", "values"), CASES)
def test_values_match_feast_protobuf(value_type, arrow_type, values) -> None:
    expected = [
        p.SerializeToString() for p in python_values_to_proto_values(values, value_type)
    ]
    assert _rows(value_slots(pa.array(values, type=arrow_type), value_type)) == expected


def test_timestamps_match_protobuf() -> None:
    moments = [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    expected = []
    for moment in moments:
        ts = Timestamp()
        ts.FromDatetime(moment)
        expected.append(ts.SerializeToString())
    micros = event_micros(pa.array(moments, type=pa.timestamp("us", tz="UTC")))
    assert _rows(timestamp_slots(micros)) == expected


def test_resp_bulk_strings_and_offsets() -> None:
    rows = resp.RespRows(3)
    rows.bulk(resp.constant(b"k", 3))
    rows.bulk(resp.from_bytes([b"", b"abc", b"x" * 12]))
    data, offsets = rows.build()
    expected = [b"$1\r\nk\r\n$0\r\n\r\n", b"$1\r\nk\r\n$3\r\nabc\r\n", b"$1\r\nk\r\n$12\r\n" + b"x" * 12 + b"\r\n"]
    assert data.tobytes() == b"".join(expected)
    assert [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(3)] == expected


def test_decimal_and_varint_edges() -> None:
    values = np.array([0, 9, 10, 99, 100, 12345])
    assert _rows([resp.decimal(values)]) == [str(v).encode() for v in values]
    encoded = _rows([resp.varint(np.array([0, 127, 128, 16384, -1]))])
    assert [
        Value(int64_val=v).SerializeToString()[1:] for v in (0, 127, 128, 16384, -1)
    ] == encoded


def test_int64_entity_keys_match_feast(configure, tmp_path) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.online.feast_layout import RedisLayout

    store = apply(configure())
    view = select_views(store, ["card_transaction_features"])[0]
    layout = RedisLayout(view, store.config)
    ids = [0, 1, -5, 2**40, 2**63 - 1]
    table = pa.table({"card_id": pa.array(ids, pa.int64())})
    expected = [
        _redis_key(
            store.config.project,
            EntityKey(join_keys=["card_id"], entity_values=[Value(int64_val=i)]),
            entity_key_serialization_version=store.config.entity_key_serialization_version,
        )
        for i in ids
    ]
    assert _rows(layout.key_slots(table)) == expected
    assert layout.keys_slow(table) == expected
