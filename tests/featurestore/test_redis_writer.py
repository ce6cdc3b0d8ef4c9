"""The never-older check of the Redis writer's script, on event times either side of 1970."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.online.redis_writer import WRITE_IF_NOT_OLDER

pytestmark = pytest.mark.redis

_YEAR_1 = -62_135_596_800  # 0001-01-01T00:00:00Z in seconds
_YEAR_9999 = 253_402_300_799  # 9999-12-31T23:59:59Z


def _write(client, seconds: int, nanos: int, value: bytes) -> int:
    proto = Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    # ARGV: ttl, one feature, the timestamp field, the feature field, then the row.
    return client.eval(WRITE_IF_NOT_OLDER, 1, "k", 0, 1, "_ts:v", "f", proto, value)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ((_YEAR_1, 0), (1_772_000_000, 0)),  # defect: year 1 read as ~1.8e19 s, never replaced
        ((_YEAR_1, 0), (_YEAR_1, 1_000)),
        ((_YEAR_1, 0), (_YEAR_1 + 1, 0)),
        ((-1, 999_999_000), (0, 0)),  # 1 µs before the epoch, then the epoch
        ((-2, 0), (-1, 0)),
        ((1_772_000_000, 0), (_YEAR_9999, 999_999_000)),
    ],
)
def test_a_newer_row_replaces_an_older_one_and_never_the_reverse(redis_client, older, newer):
    assert _write(redis_client, *older, b"old") == 1
    assert _write(redis_client, *newer, b"new") == 1
    assert _write(redis_client, *older, b"old") == 0
    assert redis_client.hget("k", "f") == b"new"
