"""Dead letters fit the broker's limit whatever the record, and say what they were."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import deadletter
from streaming.task import DeadLetter
from streaming.validation import INTERNAL_ERROR, OVERSIZED, Rejected
from tests.streaming.test_task import Record

LIMIT = deadletter.size_limit(1_048_576, None)


def _size(key, value, headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(n) + len(d) for n, d in headers)


def test_a_small_dead_letter_keeps_its_key_and_bytes() -> None:
    letter = DeadLetter(Record(7, b"k", b"{}"), Rejected(OVERSIZED, "too big"))
    key, value, headers = deadletter.message(letter, "tx", 2, LIMIT)
    assert (key, value) == (b"k", b"{}")
    assert headers == [("reason", b"oversized"), ("detail", b"too big"), ("source-topic", b"tx"),
                       ("source-partition", b"2"), ("source-offset", b"7")]


@pytest.mark.parametrize("size", [LIMIT - 20, 1_048_576, 5_000_000])
def test_a_dead_letter_above_the_limit_is_cut_with_its_size_and_digest(size) -> None:
    """Defect: a 5 MB message's dead letter raised MessageSizeTooLargeError; the worker died."""
    original = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = DeadLetter(Record(7, b"k", original), Rejected(OVERSIZED, "too big"))
    key, value, headers = deadletter.message(letter, "tx", 2, LIMIT)
    named = dict(headers)
    assert key == b"k" and original.startswith(value) and _size(key, value, headers) <= LIMIT
    assert named["original-value-bytes"] == b"%d" % size
    assert named["value-sha256"] == hashlib.sha256(original).hexdigest().encode()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(key=st.one_of(st.none(), st.integers(0, 3 * LIMIT)),
       value=st.one_of(st.none(), st.integers(0, 3 * LIMIT)),
       error=st.one_of(st.none(), st.text(max_size=5000)))
def test_every_dead_letter_fits(key, value, error) -> None:
    record = Record(1, None if key is None else b"k" * key, None if value is None else b"v" * value)
    letter = DeadLetter(record, Rejected(INTERNAL_ERROR, f"processing raised {error}"), error)
    out_key, out_value, headers = deadletter.message(letter, "tx", 0, LIMIT)
    assert _size(out_key, out_value, headers) <= LIMIT
    assert (out_key is None) == (key is None) and (out_value is None) == (value is None)
    if error is not None:
        assert dict(headers)["exception"] == error.encode("utf-8", "backslashreplace")[:2048]
